// An ES module with an async handler, run by node.
//
// Run it:    cd examples/js_esm && connector run        (needs Node.js 18 or later)
// Then look: python ../show.py warehouse.duckdb
//
// The "API" is a feed of order events, PAGE_SIZE per call after the `position` in
// `state`: new orders, and cancellations that delete an order sent earlier. Amounts are
// declared DECIMAL(10,2), so the warehouse stores them exactly.

const PAGE_SIZE = 4;
const FEED = [
  { order: { id: 1, customer: 'ana', amount: 19.9, placedAt: '2025-03-01T10:00:00Z' } },
  { order: { id: 2, customer: 'bo', amount: 5, placedAt: '2025-03-01T11:30:00Z' } },
  { order: { id: 3, customer: 'ana', amount: 120.25, placedAt: '2025-03-02T08:15:00Z' } },
  { order: { id: 4, customer: 'cy', amount: 42, placedAt: '2025-03-02T09:00:00Z' } },
  { cancelled: 2 },
  { order: { id: 5, customer: 'bo', amount: 7.5, placedAt: '2025-03-03T14:45:00Z' } },
  { order: { id: 6, customer: 'dee', amount: 310, placedAt: '2025-03-04T16:20:00Z' } },
];

async function fetchEvents(position) {
  await new Promise((resolve) => setTimeout(resolve, 5)); // as a real API call would
  return FEED.slice(position, position + PAGE_SIZE);
}

export async function handler(request) {
  const position = request.state.position ?? 0;
  const events = await fetchEvents(position);
  return {
    state: { position: position + events.length },
    insert: { orders: events.filter((event) => event.order).map((event) => event.order) },
    delete: { orders: events.filter((event) => event.cancelled).map((event) => ({ id: event.cancelled })) },
    schema: { orders: { primary_key: ['id'], columns: { amount: 'DECIMAL(10,2)' } } },
    hasMore: position + events.length < FEED.length,
  };
}
