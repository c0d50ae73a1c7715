"""Eclipse Paho (Python) as the feed's user: subscriptions, and a persistent session that goes away.

Usage:
  paho_clients.py subscribe HOST PORT {3.1.1|5} FILTER=COUNT...
      One connection per FILTER, each subscribed at QoS 1, all at once; exits 0 once every
      connection has COUNT messages, 1 on a refusal or after 30 s.
  paho_clients.py session HOST PORT {3.1.1|5} CLIENT_ID BEFORE AWAY_MS AFTER
      Connects with clean session off (3.1.1) or clean start off and a session expiry of 300 s
      (5), subscribes to btc/# at QoS 1, takes BEFORE messages, disconnects, stays away AWAY_MS,
      connects again the same way without subscribing, takes AFTER messages; exits 0 then, 1 on
      a refusal or after 30 s of waiting.

Prints one line per message: LABEL<TAB>TOPIC<TAB>RETAIN<TAB>PAYLOAD, LABEL being the filter
(subscribe) or before/after (session). Lines are printed at the end, in arrival order.
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

WAIT = 30
lines = []
lock = threading.Lock()
failed = []


def fail(why):
    failed.append(why)


class Connection:
    """One client; records what it receives under `label` until it has `count` messages."""

    def __init__(self, host, port, version, client_id="", persistent=False):
        self.version = version
        self.persistent = persistent
        protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
        kwargs = {"protocol": protocol, "client_id": client_id}
        if version != "5":
            kwargs["clean_session"] = not persistent
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_message = self.on_message
        self.host, self.port = host, port
        self.label = None
        self.count = 0
        self.got = 0
        self.done = threading.Event()
        self.connected = threading.Event()
        self.filter = None

    def start(self, label, count, topic_filter=None):
        self.label, self.count, self.got, self.filter = label, count, 0, topic_filter
        self.done.clear()
        self.connected.clear()
        properties = None
        clean_start = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        if self.version == "5":
            clean_start = not self.persistent
            if self.persistent:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = 300
        if self.version == "5":
            self.client.connect(self.host, self.port, keepalive=10, clean_start=clean_start,
                                properties=properties)
        else:
            self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()

    def on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code != 0:
            fail(f"connect refused: {reason_code}")
            self.done.set()
            return
        self.connected.set()
        if self.filter is not None:
            client.subscribe(self.filter, qos=1)

    def on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        if any(rc.is_failure for rc in reason_codes):
            fail(f"subscription refused: {reason_codes}")
            self.done.set()

    def on_message(self, client, userdata, message):
        with lock:
            lines.append(f"{self.label}\t{message.topic}\t{int(message.retain)}\t{message.payload.decode()}")
        self.got += 1
        if self.got >= self.count:
            self.done.set()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def finish(ok):
    for line in lines:
        print(line)
    if failed:
        print(failed[0], file=sys.stderr)
        sys.exit(1)
    if not ok:
        print("timed out", file=sys.stderr)
    sys.exit(0 if ok else 1)


def main():
    mode, host, port, version = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if mode == "subscribe":
        connections = []
        for arg in sys.argv[5:]:
            topic_filter, count = arg.rsplit("=", 1)
            connection = Connection(host, port, version)
            connection.start(topic_filter, int(count), topic_filter)
            connections.append(connection)
        deadline = time.monotonic() + WAIT
        ok = all(c.done.wait(max(0, deadline - time.monotonic())) for c in connections)
        for c in connections:
            c.stop()
        finish(ok and not failed)
    elif mode == "session":
        client_id, before, away_ms, after = sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
        connection = Connection(host, port, version, client_id, persistent=True)
        connection.start("before", before, "btc/#")
        if not connection.done.wait(WAIT) or failed:
            connection.stop()
            finish(False)
        connection.stop()
        time.sleep(away_ms / 1000)
        # Back, without subscribing: what arrives was queued for the session, then live.
        connection.start("after", after)
        ok = connection.done.wait(WAIT)
        connection.stop()
        finish(ok and not failed)
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        sys.exit(2)


main()
