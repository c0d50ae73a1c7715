// MQTT.js (the `mqtt` package from npm, as browsers and Node dashboards use it) as the feed's user:
// subscriptions, and a persistent session that goes away. Over plain MQTT (mqtt://HOST:PORT) or
// MQTT over WebSocket (ws://HOST:PORT/mqtt).
//
// Usage:
//   node mqttjs_clients.js subscribe URL {3.1.1|5} FILTER=COUNT...
//       One connection per FILTER, each subscribed at QoS 1, all at once; exits 0 once every
//       connection has COUNT messages, 1 on a refusal or after 30 s.
//   node mqttjs_clients.js session URL {3.1.1|5} CLIENT_ID BEFORE AWAY_MS AFTER
//       Connects with clean session off (3.1.1) or clean start off and a session expiry of 300 s
//       (5), subscribes to btc/# at QoS 1, takes BEFORE messages, disconnects, stays away
//       AWAY_MS, connects again the same way without subscribing, takes AFTER messages; exits 0
//       then, 1 on a refusal or after 30 s of waiting.
//
// Prints one line per message: LABEL<TAB>TOPIC<TAB>RETAIN<TAB>PAYLOAD, LABEL being the filter
// (subscribe) or before/after (session), at the end, in arrival order.
'use strict';
const mqtt = require('mqtt');

const WAIT_MS = 30000;
const lines = [];

function options(version, extra) {
  return {
    protocolVersion: version === '5' ? 5 : 4,
    keepalive: 10,
    reconnectPeriod: 0,
    connectTimeout: WAIT_MS,
    ...extra,
  };
}

// Connects, subscribes to `filter` (if any), records messages under `label`; resolves with the
// client once it has `count` of them.
function take(url, version, label, count, filter, extra) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, options(version, extra));
    let got = 0;
    const timer = setTimeout(() => reject(new Error(`${label}: ${got} of ${count} messages`)), WAIT_MS);
    client.on('error', (e) => reject(new Error(`${label}: ${e.message}`)));
    client.on('connect', () => {
      if (filter === undefined) return;
      client.subscribe(filter, { qos: 1 }, (err, granted) => {
        if (err) return reject(new Error(`${label}: ${err.message}`));
        if (granted.some((g) => g.qos > 2)) {
          reject(new Error(`subscription refused: ${JSON.stringify(granted)}`));
        }
      });
    });
    client.on('message', (topic, payload, packet) => {
      lines.push(`${label}\t${topic}\t${packet.retain ? 1 : 0}\t${payload.toString()}`);
      got += 1;
      if (got === count) {
        clearTimeout(timer);
        resolve(client);
      }
    });
  });
}

// Sends DISCONNECT and resolves once it is written. Not waiting for the connection to close: rmqtt
// 0.24 keeps the socket of a session it keeps until the session ends, so over WebSocket the close
// handshake would wait out the ws library's 30 s timeout.
function end(client) {
  return new Promise((resolve) => {
    client.on('packetsend', (packet) => {
      if (packet.cmd === 'disconnect') resolve();
    });
    client.end(false, {}, resolve);
  });
}

function persistent(version, clientId) {
  if (version === '5') {
    return { clientId, clean: false, properties: { sessionExpiryInterval: 300 } };
  }
  return { clientId, clean: false };
}

async function main() {
  const [mode, url, version, ...rest] = process.argv.slice(2);
  if (mode === 'subscribe') {
    const clients = await Promise.all(rest.map((arg) => {
      const at = arg.lastIndexOf('=');
      const filter = arg.slice(0, at);
      return take(url, version, filter, Number(arg.slice(at + 1)), filter, {});
    }));
    await Promise.all(clients.map(end));
  } else if (mode === 'session') {
    const [clientId, before, awayMs, after] = rest;
    const first = await take(url, version, 'before', Number(before), 'btc/#', persistent(version, clientId));
    await end(first);
    await new Promise((r) => setTimeout(r, Number(awayMs)));
    // Back, without subscribing: what arrives was queued for the session, then live.
    const back = await take(url, version, 'after', Number(after), undefined, persistent(version, clientId));
    await end(back);
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
}

main().then(
  () => {
    for (const line of lines) console.log(line);
    process.exit(0);
  },
  (e) => {
    for (const line of lines) console.log(line);
    console.error(e.message);
    process.exit(1);
  },
);
