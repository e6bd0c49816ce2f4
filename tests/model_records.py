"""Models-topic records built in memory, as a worker reads them back, for tests of the
lifecycle's own logic."""

from collections.abc import Iterable

from service.lifecycle.registry import ModelRecord, Publication, parse_key

BASE_MS = 1_790_000_000_000


def as_records(publications: Iterable[Publication], first_offset: int = 0) -> list[ModelRecord]:
    records = []
    for offset, publication in enumerate(publications, start=first_offset):
        name, role = parse_key(publication.key)
        records.append(
            ModelRecord(
                key=publication.key,
                name=name,
                role=role,
                value=publication.value,
                headers={k: v.decode() for k, v in publication.headers},
                partition=0,
                offset=offset,
                timestamp_ms=BASE_MS + offset,
            )
        )
    return records
