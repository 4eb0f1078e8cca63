"""A schema registry in memory, for the benchmarks that frame values as Confluent's wire
format does (a real registry is asked once per schema and process, never per value)."""

from __future__ import annotations

from services.common.serde import Registry


class MemoryRegistry(Registry):
    def __init__(self) -> None:
        self.schemas: list[dict] = []

    def schema_id(self, name, schema):
        if schema not in self.schemas:
            self.schemas.append(schema)
        return self.schemas.index(schema) + 1

    def schema(self, schema_id):
        return self.schemas[schema_id - 1]
