-- Cohort retention with retention(): customers by the week of their first touchpoint of their
-- own; the share of each cohort active again 1, 2, 3 and 4 weeks later.
WITH weeks AS
(
    SELECT customer_id,
           toMonday(event_time) AS week,
           min(toMonday(event_time)) OVER (PARTITION BY customer_id) AS first_week
    FROM kizuna.touchpoints
    WHERE customer_id IS NOT NULL AND event_type NOT IN ('email_send', 'email_bounce')
)
SELECT cohort,
       count() AS customers,
       round(sum(r[2]) / customers, 4) AS week_1,
       round(sum(r[3]) / customers, 4) AS week_2,
       round(sum(r[4]) / customers, 4) AS week_3,
       round(sum(r[5]) / customers, 4) AS week_4
FROM
(
    SELECT customer_id, any(first_week) AS cohort,
           retention(week = first_week, week = first_week + 7, week = first_week + 14,
                     week = first_week + 21, week = first_week + 28) AS r
    FROM weeks
    GROUP BY customer_id
)
GROUP BY cohort
ORDER BY cohort
