-- wrk script: HTTP/1.1 pipelining for bench/http_peers.sh.
--
-- Each batch is PIPELINE_DEPTH (default 16) copies of the request for the URL's path,
-- written at once; wrk counts every response in Requests/sec and records one latency
-- sample per batch (send -> last response of the batch).
--
--   PIPELINE_DEPTH=16 WRK_CONNECTIONS=256 \
--     wrk -t1 -c256 -d10s -s bench/peers/pipeline.lua http://127.0.0.1:18080/health
--
-- Why done() below exists: wrk 4.x "corrects" its latency histogram for coordinated
-- omission with an interval computed from the number of *responses*, which is DEPTH times
-- too short for per-batch samples. The synthetic samples it adds then fall below the
-- recorded minimum, where its percentile scan never looks, so its "Latency Distribution"
-- for pipelined runs is wrong and often reads 0.00us (a long-standing wrk issue). done()
-- reads wrk's histogram through LuaJIT's FFI, undoes that correction exactly (it is
-- deterministic), re-applies it with the per-batch interval — the same statistic wrk
-- reports for non-pipelined runs — and prints one line that the bench parses:
--   pipeline-batch-latency-us p50=<us> p99=<us> p99_uncorrected=<us> batches=<n>
-- WRK_CONNECTIONS must equal wrk's -c (the correction interval depends on it).

local depth = tonumber(os.getenv("PIPELINE_DEPTH") or "16")
local batch

init = function(args)
   local reqs = {}
   for i = 1, depth do
      reqs[i] = wrk.format(nil, nil) -- method and path from the command line
   end
   batch = table.concat(reqs)
end

request = function()
   return batch
end

-- p-th percentile (wrk's rule: rank = round(p/100 * count + 0.5)) of counts h[0..max]
local function percentile(h, max, total, p)
   local rank = math.floor(p / 100 * total + 0.5 + 0.5)
   local acc = 0
   for i = 0, max do
      acc = acc + h[i]
      if acc >= rank then return i end
   end
   return max
end

-- out[m] = h[m] + sum_{k>=1} h[m + k*e] for m > e (wrk's stats_correct), else h[m]
local function correct(ffi, h, max, e)
   local out = ffi.new("double[?]", max + 1)
   if e <= 0 then
      for m = 0, max do out[m] = h[m] end
      return out
   end
   local ring = ffi.new("double[?]", e) -- per residue class: sum of h above m
   for m = max, 0, -1 do
      local r = m % e
      out[m] = h[m] + ((m > e) and ring[r] or 0)
      ring[r] = ring[r] + h[m]
   end
   return out
end

done = function(summary, latency, requests)
   local function unavailable(why)
      io.write("pipeline-batch-latency-us unavailable (", why, ")\n")
   end
   local conns = tonumber(os.getenv("WRK_CONNECTIONS") or "")
   if not conns or conns < 1 then return unavailable("WRK_CONNECTIONS not set") end
   local ok, ffi = pcall(require, "ffi")
   if not ok then return unavailable("wrk is not built on LuaJIT") end
   pcall(ffi.cdef, "typedef struct { uint64_t count, limit, min, max; } wrk_stats_head;")

   -- the userdata holds a `stats *` (wrk's src/stats.h: count, limit, min, max, data[])
   local s = ffi.cast("wrk_stats_head **", latency)[0]
   local count, limit = tonumber(s.count), tonumber(s.limit)
   local min, max = tonumber(s.min), tonumber(s.max)
   if #latency == 0 or min ~= latency.min or max ~= latency.max or max >= limit then
      return unavailable("unexpected wrk histogram layout")
   end
   local data = ffi.cast("uint64_t *", s) + 4

   -- wrk's own correction interval (integer arithmetic, as in wrk.c)
   local per_conn = math.floor(summary.requests / conns)
   local e = per_conn > 0 and math.floor(summary.duration / per_conn) or 0

   -- undo it, top down: orig[m] = data[m] - sum_{k>=1} orig[m + k*e] for m > e
   local orig = ffi.new("double[?]", max + 1)
   local ring = e > 0 and ffi.new("double[?]", e) or nil
   local total_in, batches = 0, 0
   for m = max, 0, -1 do
      local v = tonumber(data[m])
      total_in = total_in + v
      if e > 0 then
         local r = m % e
         if m > e then v = v - ring[r] end
         ring[r] = ring[r] + v
      end
      if v < 0 or (v > 0 and m < min) then
         return unavailable("histogram does not match wrk's correction")
      end
      orig[m] = v
      batches = batches + v
   end
   if total_in ~= count or batches == 0 then
      return unavailable("histogram totals do not add up")
   end

   -- re-apply with the per-batch interval
   local per_conn_b = math.floor(math.floor(summary.requests / depth) / conns)
   local eb = per_conn_b > 0 and math.floor(summary.duration / per_conn_b) or 0
   local corr = correct(ffi, orig, max, eb)
   local corr_total = 0
   for m = 0, max do corr_total = corr_total + corr[m] end

   io.write(string.format("pipeline-batch-latency-us p50=%d p99=%d p99_uncorrected=%d batches=%d\n",
      percentile(corr, max, corr_total, 50), percentile(corr, max, corr_total, 99),
      percentile(orig, max, batches, 99), batches))
end
