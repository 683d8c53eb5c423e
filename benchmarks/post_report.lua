-- wrk script: POSTs Sinch-style MM7 DeliveryReportReqs, one new report per request.
--
--   wrk -t2 -c8 -d10s --latency -s benchmarks/post_report.lua http://127.0.0.1:8080/mm7 -- RUNTAG [GAP_MS]
--
-- RUNTAG (optional) prefixes every TransactionID and MessageID: mm7soap recognises a
-- resend by (TransactionID, MessageID), so ids must not repeat across runs on one database.
-- GAP_MS (optional) paces each connection: after each answer it waits a random time with
-- this mean (exponentially distributed, so the connections together post at random
-- moments like independent MMSC threads, not in lockstep). Without it wrk posts as fast
-- as answers come back.
-- At the end it prints one line, `RESULT {json}`, which benchmarks/run.py parses.

wrk.method = "POST"
-- Exactly the headers Sinch sends with a delivery report: a multipart type without a
-- boundary over a bare XML body, and the namespace URI as SOAPAction.
wrk.headers["Content-Type"] = 'multipart/related; type="text/xml";'
wrk.headers["SOAPAction"] = '"http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4"'
wrk.headers["X-Mblox-Carrier-Id"] = "0001890"

local ENVELOPE = [[
<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/" xmlns="http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4">
  <soap-env:Header><TransactionID soap-env:mustUnderstand="1">%s</TransactionID></soap-env:Header>
  <soap-env:Body>
    <DeliveryReportReq>
      <MM7Version>6.8.0</MM7Version>
      <MessageID>%s</MessageID>
      <Recipient><Number>15551230001</Number></Recipient>
      <Sender><Number>24680</Number></Sender>
      <Date>2026-11-27T09:15:02.417Z</Date>
      <MMStatus>Retrieved</MMStatus>
      <StatusText>Success</StatusText>
      <UACapabilities UAProf="Samsung Galaxy"/>
    </DeliveryReportReq>
  </soap-env:Body>
</soap-env:Envelope>
]]

-- Main state: the thread objects, numbered so each thread's ids are its own.
local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

-- Thread state (globals, so that done() can read them with thread:get).
id = 0
tag = "run"
counter = 0
ok_1000 = 0
not_1000 = 0
-- TransactionIDs sent and not yet answered: when wrk stops at the deadline it abandons
-- requests in flight, which the server may still store; run.py looks these up.
pending = {}

gap_ms = nil

function init(args)
   -- wrk numbers the arguments after the URL from 0 or 1 depending on how getopt
   -- permuted them; keep those that are not the URL, in order.
   local mine = {}
   for i = 0, #args do
      local arg = args[i]
      if arg and not string.find(arg, "://", 1, true) then
         table.insert(mine, arg)
      end
   end
   tag = mine[1] or tag
   gap_ms = tonumber(mine[2] or "")
   math.randomseed(os.time() * 1000 + id)
end

function delay()
   if not gap_ms then
      return 0
   end
   return math.floor(-math.log(1 - math.random()) * gap_ms + 0.5)
end

function request()
   counter = counter + 1
   local tid = string.format("%s-t%d-%d", tag, id, counter)
   pending[tid] = true
   return wrk.format(nil, nil, nil, string.format(ENVELOPE, tid, "mid-" .. tid))
end

function response(status, headers, body)
   if status == 200 and string.find(body, "<StatusCode>1000</StatusCode>", 1, true) then
      ok_1000 = ok_1000 + 1
   else
      not_1000 = not_1000 + 1
   end
   local tid = string.match(body, "<TransactionID[^>]*>([^<]*)</TransactionID>")
   if tid then
      pending[tid] = nil
   end
end

local function json_string(s)
   return '"' .. string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end) .. '"'
end

function done(summary, latency, requests)
   local ok, other, unanswered = 0, 0, {}
   for _, thread in ipairs(threads) do
      ok = ok + thread:get("ok_1000")
      other = other + thread:get("not_1000")
      for tid, _ in pairs(thread:get("pending")) do
         table.insert(unanswered, json_string(tid))
      end
   end
   local e = summary.errors
   io.write(string.format(
      'RESULT {"requests": %d, "ok_1000": %d, "not_1000": %d, "errors": {"connect": %d, "read": %d, '
         .. '"write": %d, "status": %d, "timeout": %d}, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
         .. '"requests_per_sec": %.2f, "unanswered": [%s]}\n',
      summary.requests, ok, other, e.connect, e.read, e.write, e.status, e.timeout, summary.duration,
      latency:percentile(50), latency:percentile(99), summary.requests / (summary.duration / 1e6),
      table.concat(unanswered, ", ")))
end
