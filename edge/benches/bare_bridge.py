"""The baseline of the edge benchmark: the MQTT-to-Kafka bridge users write by hand.

Reads MQTT payloads from stdin (`mosquitto_sub -q 1 ...` prints each followed by a line break,
so a message packing several events as JSON Lines prints as one line per event) and produces
each line to Kafka with the same durability settings as the edge (idempotent, acks=all), keyed by nothing.
No validation, no dedup, no dead-letter, no ack-after-Kafka: that is what makes it a baseline.
"""

import sys

from confluent_kafka import Producer

brokers, topic = sys.argv[1], sys.argv[2]
producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
for line in sys.stdin.buffer:
    while True:
        try:
            producer.produce(topic, line.rstrip(b"\n"))
            break
        except BufferError:
            producer.poll(0.01)
    producer.poll(0)
producer.flush(30)
