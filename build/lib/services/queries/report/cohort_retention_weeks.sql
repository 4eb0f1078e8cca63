-- Cohort retention heatmap: customers by the week (Monday) of their first touchpoint of their
-- own; for each week since, the share of the cohort active again (a touchpoint of their own;
-- email sends and bounces are not the customer's doing).
WITH active AS
(
    SELECT customer_id, toMonday(event_time) AS week
    FROM kizuna.touchpoints
    WHERE customer_id IS NOT NULL AND event_type NOT IN ('email_send', 'email_bounce')
    GROUP BY customer_id, week
),
firsts AS
(
    SELECT customer_id, min(week) AS cohort FROM active GROUP BY customer_id
),
sizes AS
(
    SELECT cohort, count() AS cohort_customers FROM firsts GROUP BY cohort
)
SELECT toString(f.cohort) AS cohort,
       intDiv(dateDiff('day', f.cohort, a.week), 7) AS weeks_since,
       uniqExact(a.customer_id) AS customers,
       any(s.cohort_customers) AS cohort_customers,
       round(customers / cohort_customers, 4) AS share
FROM active AS a
INNER JOIN firsts AS f ON f.customer_id = a.customer_id
INNER JOIN sizes AS s ON s.cohort = f.cohort
GROUP BY cohort, weeks_since
ORDER BY cohort, weeks_since
