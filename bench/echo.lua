wrk.method = "POST"
wrk.body = '{"start_event": {"message": "hello"}}'
wrk.headers["Content-Type"] = "application/json"
