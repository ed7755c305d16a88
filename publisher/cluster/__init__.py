"""Script calls on a Redis Cluster: one pipelined round trip per primary, redirections followed.

    target = parse_cluster_url("redis+cluster://10.0.0.1:6379,10.0.0.2:6379")
    transport = SyncClusterTransport(target, retries=3)      # AsyncClusterTransport: awaitable
    replies = transport.run(calls)                           # in call order, like SyncTransport

Why not redis-py's `RedisCluster`: its command path is redis-py's, whose per-command CPU is what
`publisher.script_runner` exists to avoid, and the bus needs per-node clients anyway, for its
own sharded pub/sub connections. So this package keeps one redis-py client per node and sends to
each through a `script_runner` transport: the same kept connections, fork handling and reply
reading as with a single Redis. A single call whose node is known costs a few µs more than
with `SyncTransport`; no planning is done for it.

Routing: a call goes to the primary of the slot of its first key (`Call.args` is `numkeys,
keys..., args...`); the bus keeps every key of one call in one slot with hash tags, and Redis
refuses one that does not (CROSSSLOT, raised as a refusal). A call without keys goes to any
primary, all such calls of a batch to the same one. The calls of a batch are grouped by
primary, in order, and each group goes in one round trip (the async transport sends to the
primaries concurrently). The slot map comes from CLUSTER SLOTS, asked of the node that last
answered, the other known nodes, then the URL's seeds; a node that just failed is asked last.

Redirections and failures, per `run`:
- `MOVED slot host:port`: the map is refreshed (the redirection's owner wins over a node that
  has not heard of the move yet) and the call resent there, at most `MAX_REDIRECTS` times;
- `ASK slot host:port`: the call is resent once to that node after ASKING (before an EVAL
  fallback too), without changing the map: the slot is being migrated;
- `TRYAGAIN`, `CLUSTERDOWN`, `READONLY`, no node serving a slot, or a connection error or
  timeout on a node (a failover: a replica is being promoted): the map is refreshed (not for
  TRYAGAIN) and the call resent after `script_runner.backoff`, `retries` times per `run` in
  all, then `PublishError` (`PublishTimeout` when the last failure was a timeout).

Delivery is at least once, as with `script_runner`: a call is sent again only when it did not
run (a redirection, TRYAGAIN, CLUSTERDOWN or NOSCRIPT reply) or when the connection it went on
failed before its reply came, and in that last case Redis may have run it already. When `run`
raises, the calls that other nodes answered have run (as the calls before a refusal do with
`script_runner`), and the error's `replies` says what each call came to, so that the senders
give those calls' emits their positions. A refusal (a script error, CROSSSLOT...) is raised once every other call of
the batch is settled, naming the call and the node. Order: the
calls of one slot go to one node per round trip, in order, and a call held back (redirected,
told to try again, or on a failed connection) is resent before the later calls of its slot
that are held back with it; the calls of one slot that needed no retry keep their order too.
What Redis itself can interleave is left as it is: while a slot is migrated, a call whose keys
already moved (ASK) runs after a later call whose keys had not, so calls to *different* keys of
one slot may swap then; calls to the same keys never do (their keys move together).

A script is sent whole (EVAL) the first time it goes to a node this process has not seen run
it (or whose connection failed since), then by its SHA1: a replica promoted by a failover has
none of its primary's scripts, and this spares the NOSCRIPT round trip there, and the
reordering that the fallback brings (as in `script_runner`: a later call whose script was
cached runs before an earlier one answered NOSCRIPT). That remains possible after a node flushed
its scripts without its connections failing (SCRIPT FLUSH).

One module per job, so each is found by its name (issue 11); this package is their one public
entry, and `from publisher.cluster import X` works for every name of `__all__`:

- `urls`: the `redis+cluster://` URL (`parse_cluster_url`, `ClusterTarget`, `NodeAddress`);
- `mode`: whether a Redis runs with cluster support (`is_cluster_node`, `expect_standalone`);
- `slots`: key slots and the slot map (`key_slot`, `SlotMap`), without I/O;
- `topology`: the slot map kept fresh, and a client per node (`ClusterTopology`);
- `routing`: what one `run` sends where, and what it does with each reply (the policy above,
  without I/O);
- `transports`: `SyncClusterTransport`, `AsyncClusterTransport`, the round trips themselves.
"""

from publisher.cluster.mode import (
    ClusterModeError,
    async_expect_standalone,
    async_is_cluster_node,
    expect_standalone,
    is_cluster_node,
)
from publisher.cluster.routing import MAX_REDIRECTS
from publisher.cluster.slots import SLOTS, ClusterUnreachable, SlotMap, key_slot
from publisher.cluster.topology import AsyncClusterTopology, ClusterTopology
from publisher.cluster.transports import AsyncClusterTransport, SyncClusterTransport
from publisher.cluster.urls import (
    DEFAULT_PORT,
    SCHEMES,
    ClusterTarget,
    NodeAddress,
    cluster_url_for,
    is_cluster_url,
    parse_cluster_url,
)

__all__ = [
    "DEFAULT_PORT",
    "MAX_REDIRECTS",
    "SCHEMES",
    "SLOTS",
    "AsyncClusterTopology",
    "AsyncClusterTransport",
    "ClusterModeError",
    "ClusterTarget",
    "ClusterTopology",
    "ClusterUnreachable",
    "NodeAddress",
    "SlotMap",
    "SyncClusterTransport",
    "async_expect_standalone",
    "async_is_cluster_node",
    "cluster_url_for",
    "expect_standalone",
    "is_cluster_node",
    "is_cluster_url",
    "key_slot",
    "parse_cluster_url",
]
