// Segment's Node SDK (@segment/analytics-node) pointed at Kizuna's collector: the calls of
// test_trackers.py. Usage: node segment_node.cjs HOST WRITE_KEY TAG CUSTOMER ISO_TIME
const { Analytics } = require("@segment/analytics-node");

const [host, writeKey, tag, customer, at] = process.argv.slice(2);
const analytics = new Analytics({ writeKey, host, flushAt: 20, maxRetries: 2 });
const errors = [];
analytics.on("error", (err) => errors.push(String(err && (err.reason || err.message || err))));
const timestamp = new Date(at);
const context = { os: { name: "Android" }, app: { version: "4.2.0" } };

analytics.track({ userId: customer, event: "Product Viewed", messageId: `${tag}-node-view`,
  properties: { product_id: "P-node", price: 12.5 }, timestamp, context });
analytics.track({ userId: customer, event: "Application Opened",
  messageId: `${tag}-node-open`, timestamp, context });
analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  if (errors.length) { console.error(errors.join("\n")); process.exit(1); }
  console.log("sent");
});
