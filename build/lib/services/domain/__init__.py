"""What every stage shares: the touch, event time, the attributed message, engagement.

Pure: no Kafka, no faust, no ClickHouse. The stages (`services.ingest`, `sessionizer`,
`engagement_scorer`, `alerting`, `warehouse`) import this package and `services.common`, never
one another (tests/unit/test_layers.py). docs/architecture.md says where each rule lives.
"""
