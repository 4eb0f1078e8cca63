-- Net Promoter Score by month: % promoters (9-10) minus % detractors (0-6) among responses
-- (`nps_response` with `properties.score`); a customer's latest answer in the month counts.
SELECT month,
       count() AS responses,
       countIf(score >= 9) AS promoters,
       countIf(score BETWEEN 7 AND 8) AS passives,
       countIf(score <= 6) AS detractors,
       round(100 * (promoters - detractors) / responses, 1) AS nps
FROM
(
    SELECT toStartOfMonth(event_time) AS month,
           ifNull(customer_id, anonymous_id) AS profile,
           argMax(toFloat64OrNull(properties['score']), event_time) AS score
    FROM kizuna.touchpoints
    WHERE event_type = 'nps_response' AND toFloat64OrNull(properties['score']) IS NOT NULL
    GROUP BY month, profile
)
GROUP BY month
ORDER BY month
