// A Fivetran-style AWS Lambda function, in CommonJS with a callback, run unchanged by node.
//
// Run it:    cd examples/js_commonjs && connector run        (needs Node.js 18 or later)
// Then look: python ../show.py warehouse.duckdb
//
// The "API" holds LAST_ID customers and hands them out PAGE_SIZE at a time, after the id
// the runtime sends back in `state`. A later sync finds nothing new and keeps the cursor.

const PAGE_SIZE = 10;
const LAST_ID = 25;
const CITIES = ['Lisbon', 'Oslo', 'Zürich', 'Kraków'];

function customer(id) {
  return {
    id,
    name: `Customer ${id}`,
    city: CITIES[id % CITIES.length],
    signedUpAt: new Date(Date.UTC(2025, 0, id, 9, 30)).toISOString(), // "...Z": a UTC timestamp
    lifetimeValue: id * 12.5,
    active: id % 7 !== 0,
  };
}

exports.handler = (request, context, callback) => {
  const after = request.state.after_id || 0;
  const last = Math.min(after + PAGE_SIZE, LAST_ID);
  const customers = [];
  for (let id = after + 1; id <= last; id += 1) customers.push(customer(id));
  console.log(`${context.functionName}: customers ${after + 1}..${last}`);
  callback(null, {
    state: { after_id: last },
    insert: { customers },
    schema: { customers: { primary_key: ['id'] } },
    hasMore: last < LAST_ID,
  });
};
