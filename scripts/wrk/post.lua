-- wrk script: POST /post with a 10-word form body, as the Go clients send it.
-- wrk -t2 -c64 -d10s -s scripts/wrk/post.lua http://127.0.0.1:8080/post
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "text=the+quick+brown+fox+jumps+over+the+lazy+dog+again"
