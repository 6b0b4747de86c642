wrk.method = "POST"
wrk.body = '{"start_event": {"request": "bench"}}'
wrk.headers["Content-Type"] = "application/json"
