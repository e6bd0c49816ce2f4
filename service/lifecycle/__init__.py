"""Model lifecycle: models through Kafka, validation before a swap, shadow scoring, drift."""
