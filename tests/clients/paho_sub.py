"""Subscribe with the Eclipse Paho Python client and print `topic payload retain` lines.

Usage: paho_sub.py HOST PORT FILTER COUNT {3.1.1|5}
Exits 0 after COUNT messages, 1 on a refused subscription or after 20 s.
"""
import sys
import threading

import paho.mqtt.client as mqtt

host, port, topic, count, version = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
done = threading.Event()
received = []
failed = []


def on_connect(client, userdata, flags, reason_code, properties=None):
    if reason_code != 0:
        failed.append(f"connect refused: {reason_code}")
        done.set()
        return
    client.subscribe(topic, qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties=None):
    if any(rc.is_failure for rc in reason_codes):
        failed.append(f"subscription refused: {reason_codes}")
        done.set()


def on_message(client, userdata, message):
    # The network thread may deliver more before loop_stop(); print exactly COUNT.
    if len(received) < count:
        received.append(f"{message.topic} {message.payload.decode()} {int(message.retain)}")
    if len(received) >= count:
        done.set()


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, port, keepalive=10)
client.loop_start()
finished = done.wait(20)
client.loop_stop()
for line in received:
    print(line)
if failed:
    print(failed[0], file=sys.stderr)
    sys.exit(1)
sys.exit(0 if finished else 1)
