-- RFM segment sizes and their share of revenue; the last row answers "is it 80/20?": the
-- revenue share of the top 20% of customers by revenue.
SELECT * FROM
(
SELECT rfm_segment AS segment,
       count() AS customers,
       round(sum(total_revenue), 2) AS revenue,
       round(revenue / (SELECT sum(total_revenue) FROM kizuna.customer_profiles), 4) AS revenue_share
FROM kizuna.customer_profiles
GROUP BY segment
UNION ALL
SELECT 'top 20% by revenue', countIf(top_revenue_20),
       round(sumIf(total_revenue, top_revenue_20), 2),
       round(sumIf(total_revenue, top_revenue_20) / sum(total_revenue), 4)
FROM kizuna.customer_profiles
)
ORDER BY segment = 'top 20% by revenue', revenue DESC
