-- The RFM grid: purchasers by recency quintile (last purchase, 5 = most recent) and frequency
-- quintile (purchase count, 5 = most), the quintiles customer_profiles' segments are made of;
-- customers and revenue in each cell, and the segment most of them are in.
SELECT r, f,
       count() AS customers,
       round(sum(total_revenue), 2) AS revenue,
       topK(1)(rfm_segment)[1] AS segment
FROM
(
    SELECT ntile(5) OVER (ORDER BY last_purchase_at, customer_id) AS r,
           ntile(5) OVER (ORDER BY purchase_count, customer_id) AS f,
           total_revenue, rfm_segment
    FROM kizuna.customer_profiles
    WHERE purchase_count > 0
)
GROUP BY r, f
ORDER BY r, f
