"""Sends two 8x8 images to pixelwatch as bits: one bit per pixel, row by row, 8 bytes each."""

import os

from confluent_kafka import KafkaError, Message, Producer

IMAGES = {  # X is a black pixel (1), . a white one (0)
    "square": "........ .XXXXXX. .X....X. .X....X. .X....X. .X....X. .XXXXXX. ........",
    "corners": "XXX..XXX XXX..XXX XX....XX ........ ........ XX....XX XXX..XXX XXX..XXX",
}
failed: list[KafkaError] = []


def delivered(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        failed.append(error)


producer = Producer({"bootstrap.servers": os.getenv("PIXELWATCH_BOOTSTRAP", "localhost:9092")})
topic = os.getenv("PIXELWATCH_INPUT_TOPIC", "pixelwatch.images")
headers: dict[str, str | bytes | None]
for name, art in IMAGES.items():
    # most significant bit first: the row XXX..XXX is 0b11100111, 0xE7
    value = bytes(int(row.replace("X", "1").replace(".", "0"), 2) for row in art.split())
    headers = {"pixelwatch.format": "bits", "pixelwatch.id": f"example/{name}"}
    producer.produce(topic, key=name, value=value, headers=headers, on_delivery=delivered)
if producer.flush(30) or failed:  # flush returns the number of messages still undelivered
    raise SystemExit(f"not delivered: {failed or 'timed out'}")
