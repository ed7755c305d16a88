"""A desired channel's state, as the sink (`ChannelSink`) knows it.

Apart from `channels.py` because the topology following (`topology.py`) moves channels
between these states too, and `channels.py` imports it.
"""

from typing import Final

NEW: Final = 0  # never confirmed: a first subscription (subscribe() awaits it)
LIVE: Final = 1  # confirmed on its slot's owner
LOST: Final = 2  # not live: channels_lost was said (or subscribe returned False): owed a restore
RESTORING: Final = 3  # channels_restoring was said, SSUBSCRIBE sent on its owner's connection
