-- One name for one concept: the event time a profile is computed at is `as_of` in the Avro
-- record (schemas/engagement_profile.avsc), the code and the docs; the table called it
-- `updated_at`. The column takes the record's name; the view keeps `updated_at` as an alias
-- of it, so queries written before still run. (RFM segments as in 0003.)

ALTER TABLE {store}.customer_profiles RENAME COLUMN IF EXISTS updated_at TO as_of;

CREATE OR REPLACE VIEW {db}.customer_profiles AS
SELECT * EXCEPT (version, rfm_segment, top_revenue_20, r, f, m, revenue_rank, buyers),
       multiIf(purchase_count = 0, 'no_purchase',
               r >= 4 AND f >= 4 AND m >= 4, 'champions',
               r >= 3 AND f >= 4, 'loyal',
               r >= 4, 'potential_loyalists',
               r <= 2 AND f >= 3, 'at_risk',
               r = 1 AND f <= 2, 'lost',
               r <= 2, 'hibernating',
               'needs_attention') AS rfm_segment,
       purchase_count > 0 AND revenue_rank <= ceil(0.2 * buyers) AS top_revenue_20,
       as_of AS updated_at  -- the column's name before 0007, still readable
FROM
(
    SELECT *,
           ntile(5) OVER (PARTITION BY purchase_count > 0
                          ORDER BY last_purchase_at, customer_id) AS r,
           ntile(5) OVER (PARTITION BY purchase_count > 0
                          ORDER BY purchase_count, customer_id) AS f,
           ntile(5) OVER (PARTITION BY purchase_count > 0
                          ORDER BY total_revenue, customer_id) AS m,
           row_number() OVER (PARTITION BY purchase_count > 0
                              ORDER BY total_revenue DESC, customer_id) AS revenue_rank,
           count() OVER (PARTITION BY purchase_count > 0) AS buyers
    FROM {store}.customer_profiles FINAL
);
