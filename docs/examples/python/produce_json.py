"""Sends two 8x8 images to pixelwatch as JSON: a normal square and the anomalous corners."""

import json
import os

from confluent_kafka import KafkaError, Message, Producer

IMAGES = {  # X is a black pixel (1), . a white one (0), row by row
    "square": "........ .XXXXXX. .X....X. .X....X. .X....X. .X....X. .XXXXXX. ........",
    "corners": "XXX..XXX XXX..XXX XX....XX ........ ........ XX....XX XXX..XXX XXX..XXX",
}
failed: list[KafkaError] = []


def delivered(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        failed.append(error)


producer = Producer({"bootstrap.servers": os.getenv("PIXELWATCH_BOOTSTRAP", "localhost:9092")})
topic = os.getenv("PIXELWATCH_INPUT_TOPIC", "pixelwatch.images")
for name, art in IMAGES.items():
    pixels = [1.0 if c == "X" else 0.0 for c in art.replace(" ", "")]  # 64 numbers in [0, 1]
    value = json.dumps({"id": f"example/{name}", "pixels": pixels})
    producer.produce(topic, key=name, value=value, on_delivery=delivered)
if producer.flush(30) or failed:  # flush returns the number of messages still undelivered
    raise SystemExit(f"not delivered: {failed or 'timed out'}")
