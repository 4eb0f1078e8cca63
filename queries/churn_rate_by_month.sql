-- Churn rate by month: of the customers active in a month, the share with no touchpoint of
-- their own in the next month (campaign sends and bounces are the brand's, not theirs).
-- The latest month has no next month yet: it is left out. (The touchpoints are read once:
-- each customer's active months, then one row per customer and month.)
SELECT month,
       count() AS active_customers,
       countIf(NOT has(months, addMonths(month, 1))) AS churned,
       round(churned / active_customers, 4) AS churn_rate
FROM
(
    SELECT month, months, max(month) OVER () AS latest
    FROM
    (
        SELECT assumeNotNull(customer_id) AS customer,
               groupUniqArray(toStartOfMonth(event_time)) AS months
        FROM kizuna.touchpoints
        WHERE customer_id IS NOT NULL AND event_type NOT IN ('email_send', 'email_bounce')
        GROUP BY customer
    )
    ARRAY JOIN months AS month
)
WHERE month < latest
GROUP BY month
ORDER BY month
