#!/usr/bin/env python3
"""Regenerates examples/data/orders.ndjson (deterministic: fixed seed).

Usage: python3 examples/data/gen_orders.py > examples/data/orders.ndjson
"""
import json
import random

rng = random.Random(20240501)
products = ["keyboard", "mouse", "monitor", "cable", "laptop", "headset", "webcam"]
prices = {"keyboard": 4999, "mouse": 1999, "monitor": 18999, "cable": 899,
          "laptop": 99999, "headset": 5999, "webcam": 3999}
days = ["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04", "2024-05-05"]
bad = {
    417: '{"order_id": 418, "day": "2024-05-01", "customer": "c-17", "product": "mouse", "amount_cents": ',
    1203: 'this is not json',
    1999: '{"order_id": 2000, "day": "2024-05-03", "customer": "c-3", "product": "cable", "amount_cents": "twelve"}',
    2750: '{"order_id": 2751, "day": "2024-05-04", "product": "laptop", "amount_cents": 99999}',
    3610: '{"order_id": 3611, "day": "2024-05-05", "customer": "c-88", "product": "webcam", "amount_cents": -3999, "qty": 1}',
}
lines = []
for i in range(4000):
    if i in bad:
        lines.append(bad[i])
        continue
    day_index = min(i * len(days) // 4000, len(days) - 1)
    day = days[day_index]
    # Orders of a day spread over 08:00-20:00, in order, a few seconds of jitter.
    within = i - day_index * 800
    seconds = 8 * 3600 + within * 54 + rng.randint(0, 20)
    ts = f"{day}T{seconds // 3600:02}:{seconds % 3600 // 60:02}:{seconds % 60:02}Z"
    product = rng.choice(products)
    qty = rng.randint(1, 3)
    lines.append(json.dumps({
        "order_id": i + 1,
        "day": day,
        "ts": ts,
        "customer": f"c-{rng.randint(1, 120)}",
        "product": product,
        "amount_cents": prices[product] * qty,
        "qty": qty,
    }))
print("\n".join(lines))
