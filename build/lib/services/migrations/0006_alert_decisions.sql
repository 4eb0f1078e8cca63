-- Alert decisions made from late touches (contract section 2, "Bounded input and late data").
-- Alerting records, on an internal topic the warehouse loads into the same table, decisions
-- it never sends: `historical` (further than the correction horizon behind event time when
-- made; a backfill's abandonment rate) and `withdrawn` (a historical decision the late touches
-- no longer give). `kizuna.alerts` hides the withdrawn ones: they are not decisions of the
-- events. A sent alert the late touches no longer give is `resolved` with the reason
-- `late_purchase` or `late_correction`; it stays.

CREATE OR REPLACE VIEW {db}.alerts AS
    SELECT * EXCEPT version FROM {store}.alerts FINAL WHERE status != 'withdrawn';
