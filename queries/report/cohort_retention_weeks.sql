-- Cohort retention heatmap: customers by the week (Monday) of their first touchpoint of their
-- own; for each week since, the share of the cohort active again (a touchpoint of their own;
-- email sends and bounces are not the customer's doing). The touchpoints are read once: each
-- customer's active weeks, then one row per customer and week.
SELECT toString(first_week) AS cohort,
       intDiv(dateDiff('day', first_week, week), 7) AS weeks_since,
       count() AS customers,
       any(cohort_size) AS cohort_customers,
       round(customers / cohort_customers, 4) AS share
FROM
(
    SELECT weeks, arrayMin(weeks) AS first_week, count() OVER (PARTITION BY first_week)
               AS cohort_size
    FROM
    (
        SELECT customer_id, groupUniqArray(toMonday(event_time)) AS weeks
        FROM kizuna.touchpoints
        WHERE customer_id IS NOT NULL AND event_type NOT IN ('email_send', 'email_bounce')
        GROUP BY customer_id
    )
)
ARRAY JOIN weeks AS week
GROUP BY first_week, weeks_since
ORDER BY cohort, weeks_since
