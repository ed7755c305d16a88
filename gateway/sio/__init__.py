"""Socket.IO and Engine.IO on aiohttp: the only package that touches python-socketio's,
python-engineio's or aiohttp's internals.

The gateway keeps python-socketio's packet parsing and sid bookkeeping and python-engineio's
polling transport, and replaces what costs most with a large idle fleet (see engine.py,
socket.py, and native.py: WebSocket sessions accepted below aiohttp by gateway/ws). That reaches
past the libraries' public API. Every name listed here is relied on;
tests/unit/test_library_fence.py fails, naming it, when one is gone or changed shape, and also
when the code here starts using a library's private name that is not listed. pyproject.toml pins
the three libraries to the versions checked (`scripts/test --versions oldest|newest`).

Private names (underscored) of python-engineio:
- `engineio.AsyncServer._async`: its driver table; engine.py gives each server a copy whose
  'websocket' is WebSocketAdapter (no permessage-deflate), and calls its 'translate_request'.
- `engineio.AsyncServer._trigger_event`: engine.py overrides it to swap a polling socket's class
  on 'connect'; engine.py and socket.py call it to run python-socketio's handlers directly.
- `engineio.AsyncServer._ok`: overridden so that a POST is answered `ok`, as Engine.IO says.
- `engineio.AsyncServer._make_response`: a request refused by engine.py is answered through it,
  with python-engineio's CORS headers.
- `engineio.async_socket.AsyncSocket._websocket_handler`: FastSocket overrides it; python-engineio
  calls it with the WebSocket of an upgrade from polling.
- `engineio.async_drivers.aiohttp.WebSocket._sock`: WebSocketAdapter sets it (the driver's own
  methods read it); FastSocket._websocket_handler takes the aiohttp WebSocket from it.

Private names of python-socketio:
- `socketio.AsyncServer._engineio_server_class`: returns GatewayEngineIO; the only way to choose
  the Engine.IO server python-socketio builds.
- `socketio.AsyncServer._handle_eio_connect`: overridden: a transport starts its handshake timer.
  native.py runs it (through `_trigger_event('connect')`) inline, without a task: it must not suspend.
- `socketio.AsyncServer._handle_eio_message`: overridden: binary packets with too many
  attachments, and packets python-socketio cannot parse, close the transport.
- `socketio.AsyncServer._handle_eio_disconnect`: overridden: the handshake timer stops.
- `socketio.AsyncServer._handle_connect`: overridden: the namespace's CONNECT (authentication,
  admission, recovery; the reply waits for the subscriptions).
- `socketio.AsyncServer._handle_event`: overridden: rate limit and allow-list of client events.
- `socketio.AsyncServer._handle_ack`: overridden: a client's ACKs spend from its rate limit.
- `socketio.AsyncServer._handle_disconnect`: overridden: the reason is kept for the metrics.
- `socketio.AsyncServer._send_packet`: CONNECT_ERROR and ACK replies are sent with it (the CONNECT
  reply is written as text by server.py, the same bytes).

Private names of aiohttp:
- `aiohttp.web.WebSocketResponse._writer`: its `transport` is where engine.py writes the OPEN
  packet and FastSocket every frame (prebuilt, one write per loop turn).
- `aiohttp._websocket.helpers.websocket_mask`: gateway/ws/frames.py unmasks client frames of 64
  bytes and more with it (C, in place on a bytearray); without it, a slower pure-Python way.

Undocumented state and hooks, not underscored but internal all the same:
- `engineio.async_socket.AsyncSocket.__class__`: a polling socket python-engineio made becomes a
  FastSocket (no factory hook); the layouts must stay compatible.
- `engineio.async_socket.AsyncSocket.poll`: overridden: a newer poll releases an older one.
- `engineio.async_socket.AsyncSocket.send`: overridden: on WebSocket, written to the transport.
- `engineio.async_socket.AsyncSocket.handle_get_request`: overridden: one upgrade per session.
- `engineio.async_socket.AsyncSocket.handle_post_request`: overridden: the body is read whole.
- `engineio.async_socket.AsyncSocket.close`: overridden: does not wait for a client to drain.
- `engineio.async_socket.AsyncSocket.schedule_ping`: overridden: one Heartbeat for all sockets.
- `engineio.async_socket.AsyncSocket.last_ping`: starts as a time (4.13.2); schedule_ping needs it.
- `engineio.async_socket.AsyncSocket.queue`: a polling socket's packets; drained on the switch to
  WebSocket.
- `engineio.async_socket.AsyncSocket.upgrading`: set while FastSocket runs an upgrade.
- `engineio.async_socket.AsyncSocket.upgraded`: set once a socket is on WebSocket.
- `engineio.async_socket.AsyncSocket.connected`: set by serve_websocket (and NativeSocket.attach) for a
  direct WebSocket.
- `engineio.async_socket.AsyncSocket.closed`: read before every write and by the heartbeat.
- `engineio.async_socket.AsyncSocket.closing`: read by the heartbeat.
- `engineio.AsyncServer.create_queue`: overridden: LiteQueue allocates nothing while idle.
- `engineio.AsyncServer.start_service_task`: set off: the Heartbeat replaces the service task.
- `engineio.AsyncServer.sockets`: sessions by sid; engine.py adds the ones it opens itself.
- `engineio.async_drivers.aiohttp.translate_request`: its environ's 'wsgi.input' is aiohttp's
  stream, which FastSocket.handle_post_request reads with readexactly.
- `socketio.AsyncServer.environ`: the handshake's environ by Engine.IO sid, read on CONNECT.
- `socketio.AsyncManager.basic_enter_room`: python-socketio's own rooms of a sid (None, sid).
- `socketio.AsyncManager.basic_disconnect`: overridden: a socket is only in its own two rooms.
- `socketio.AsyncManager.rooms`: python-socketio's room table, cleaned by basic_disconnect.
- `socketio.AsyncManager.callbacks`: ack callbacks by sid, cleaned by basic_disconnect.
- `socketio.AsyncManager.pending_connect`: cleaned by basic_disconnect (5.18).
- `socketio.AsyncManager.pending_disconnect`: cleaned by basic_disconnect.
- `socketio.packet.Packet.json`: FastPacket sets orjson as the codec of every packet.
"""
