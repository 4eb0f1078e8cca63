-- Churn rate by month: of the customers active in a month, the share with no touchpoint of
-- their own in the next month (campaign sends and bounces are the brand's, not theirs).
-- The latest month has no next month yet: it is left out.
WITH active AS
(
    SELECT DISTINCT assumeNotNull(customer_id) AS customer, toStartOfMonth(event_time) AS month
    FROM kizuna.touchpoints
    WHERE customer_id IS NOT NULL AND event_type NOT IN ('email_send', 'email_bounce')
)
SELECT month,
       count() AS active_customers,
       countIf((customer, addMonths(month, 1)) NOT IN (SELECT customer, month FROM active))
           AS churned,
       round(churned / active_customers, 4) AS churn_rate
FROM active
WHERE month < (SELECT max(month) FROM active)
GROUP BY month
ORDER BY month
