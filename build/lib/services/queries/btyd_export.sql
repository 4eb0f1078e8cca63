-- Buy-till-you-die export for CLV fitting: exactly the columns of
-- lifetimes.utils.summary_data_from_transaction_data (day periods), one row per purchaser.
-- Save as CSV: kizuna query -f queries/btyd_export.sql --format csv > btyd.csv
-- then: lifetimes.BetaGeoFitter().fit(df.frequency, df.recency, df.T)
SELECT customer_id, frequency, recency, T, monetary_value
FROM kizuna.customer_profiles
WHERE purchase_count > 0
ORDER BY customer_id
