-- Insert deduplication: the warehouse tags each batch with a token (its topic-partition-offset
-- ranges, per table); ClickHouse remembers the last 1000 tokens of each table and drops a
-- retried batch it had stored already (say, the acknowledgement was lost). Replicated tables
-- do this by default; single-node MergeTrees need the window. The FINAL views deduplicate
-- what gets past it (a batch cut differently after a restart), so this saves storage and
-- merges, not correctness.

ALTER TABLE {store}.touchpoints MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {store}.sessions_by_id MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {store}.customer_profiles MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {store}.alerts MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {store}.dead_letters MODIFY SETTING non_replicated_deduplication_window = 1000;
