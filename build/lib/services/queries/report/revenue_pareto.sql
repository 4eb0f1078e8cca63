-- The Pareto curve of revenue: purchasers from the highest total revenue down; for each, the
-- share of purchasers so far and the share of revenue they make. top_20 marks the customers
-- customer_profiles flags as the top 20 % by revenue.
SELECT row_number() OVER w AS rank,
       round(rank / count() OVER (), 6) AS customer_share,
       round(sum(total_revenue) OVER w / sum(total_revenue) OVER (), 6) AS revenue_share,
       top_revenue_20 AS top_20
FROM kizuna.customer_profiles
WHERE purchase_count > 0
WINDOW w AS (ORDER BY total_revenue DESC, customer_id ROWS UNBOUNDED PRECEDING)
ORDER BY rank
