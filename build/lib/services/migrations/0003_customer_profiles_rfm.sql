-- RFM segments and the top-20%-by-revenue flag are relative to the whole customer base, which
-- no single stream partition sees, so they are computed when read: exact quintiles over the
-- current profiles on every query (a sort of the customers; fine to millions of them). The
-- scorer's topic carries the raw R, F and M inputs.
--
-- Among customers with at least one purchase, quintiles 1-5 (5 best) of
--   R: last_purchase_at (recent is better), F: purchase_count, M: total_revenue;
-- then, first match wins:
--   champions           R >= 4, F >= 4, M >= 4
--   loyal               R >= 3, F >= 4
--   potential_loyalists R >= 4
--   at_risk             R <= 2, F >= 3
--   lost                R = 1,  F <= 2
--   hibernating         R <= 2
--   needs_attention     the rest
-- Customers without a purchase: no_purchase. top_revenue_20: the first 20% of purchasers by
-- total_revenue (rounded up).

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
       purchase_count > 0 AND revenue_rank <= ceil(0.2 * buyers) AS top_revenue_20
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
