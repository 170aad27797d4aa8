"""The baseline of the edge benchmark: the MQTT-to-Kafka bridge users write by hand.

Reads MQTT payloads from stdin (`mosquitto_sub -q 1 ...` prints each followed by a line break,
so a message packing several events as JSON Lines prints as one line per event) and produces
each line to Kafka with the same durability settings as the edge (idempotent, acks=all), keyed by nothing.
No validation, no dedup, no dead-letter, no ack-after-Kafka: that is what makes it a baseline.

Like the edge's `kafka_delivered_total`, it counts Kafka's delivery confirmations: a thread
serves librdkafka's callbacks and prints the count to stdout whenever it changes, which is how
the benchmark times both pipelines the same way (publish to Kafka ack).
"""

import sys
import threading

from confluent_kafka import Producer

brokers, topic = sys.argv[1], sys.argv[2]
delivered = 0


def on_delivery(err, _msg):
    global delivered
    if err is None:
        delivered += 1  # only the polling thread runs callbacks
    else:
        print(f"delivery failed: {err}", file=sys.stderr)


producer = Producer(
    {"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 5, "on_delivery": on_delivery}
)


def report():
    shown = -1
    while True:
        producer.poll(0.05)
        if delivered != shown:
            shown = delivered
            print(shown, flush=True)


threading.Thread(target=report, daemon=True).start()
for line in sys.stdin.buffer:
    while True:
        try:
            producer.produce(topic, line.rstrip(b"\n"))
            break
        except BufferError:
            threading.Event().wait(0.01)
producer.flush(30)
