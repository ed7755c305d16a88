#!/usr/bin/env python3
"""Producer for --target project: `publisher.Publisher`, as a service of ours would use it.

The same interface as the peers' emit.js / emit.py (and the yardstick's project_emit.py):
   python project_emit.py EVENT ROOM JSON_PAYLOAD                                one event
   python project_emit.py --bench USERS EVENTS [RATE] [--room ROOM] [--batch N]
     EVENTS coins:earned events to user:N rooms round-robin (or all to ROOM); each payload carries
     seq and sentAt (ms since the epoch, float) for latency; RATE events/s (0: as fast as possible).
     --batch N (N > 1): queue N emits in `Publisher.pipeline()` and send them in one round trip,
     the way a service publishing a burst would; otherwise one `Publisher.emit()` each (queued:
     the publisher's sender thread writes what queued within its 1 ms linger, auto-pipelining).
     At a fixed RATE a batch is sent when its last event is due.
Runs under the python of the venv where the project is installed (bench/.venv-project).
"""
import json
import os
import sys
import time

try:
    from publisher import Publisher
except ImportError as e:  # the project is not installed in this interpreter
    sys.exit(f"project_emit.py: cannot import publisher ({e}); run it with bench/.venv-project/bin/python "
             "(bench/setup.sh makes it)")

EVENT = "coins:earned"


def payload(i):
    return {"amount": 50, "reason": "exercise_completed", "newBalance": i, "seq": i, "sentAt": time.time() * 1000}


def pace(t0, i, rate):
    if rate > 0:
        wait = t0 + i / rate - time.time()
        if wait > 0.001:
            time.sleep(wait)


def bench(pub, users, events, rate, room, batch):
    t0 = time.time()
    if batch <= 1:
        for i in range(events):
            pace(t0, i, rate)
            pub.emit(EVENT, payload(i), room=room or f"user:{i % users}")
        return
    for start in range(0, events, batch):
        stop = min(events, start + batch)
        pace(t0, stop - 1, rate)
        with pub.pipeline() as queued:
            for i in range(start, stop):
                queued.emit(EVENT, payload(i), room=room or f"user:{i % users}")


def main(argv):
    room, batch = None, 1
    if "--room" in argv:
        k = argv.index("--room")
        room = argv[k + 1]
        del argv[k:k + 2]
    if "--batch" in argv:
        k = argv.index("--batch")
        batch = int(argv[k + 1])
        del argv[k:k + 2]
    pub = Publisher(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        if argv[0] != "--bench":
            pub.emit(argv[0], json.loads(argv[2] if len(argv) > 2 else "{}"), room=argv[1])
        else:
            users, events = int(argv[1]), int(argv[2])
            rate = float(argv[3]) if len(argv) > 3 else 0.0
            bench(pub, users, events, rate, room, batch)
    finally:
        pub.close()


if __name__ == "__main__":
    main(sys.argv[1:])
