#include "scripts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s == NULL) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

int spillway_keys_init(spillway_keys *k, const char *ns)
{
    k->id = concat(ns, ":id");
    k->since = concat(ns, ":since");
    k->stream = concat(ns, ":s:");
    k->chan = concat(ns, ":");
    k->idem = concat(ns, ":k:");
    if (k->id == NULL || k->since == NULL || k->stream == NULL || k->chan == NULL || k->idem == NULL) {
        spillway_keys_free(k);
        return -1;
    }
    k->stream_len = strlen(k->stream);
    k->chan_len = strlen(k->chan);
    k->idem_len = strlen(k->idem);
    return 0;
}

void spillway_keys_free(spillway_keys *k)
{
    free(k->id);
    free(k->since);
    free(k->stream);
    free(k->chan);
    free(k->idem);
    k->id = k->since = k->stream = k->chan = k->idem = NULL;
}

int spillway_buf_publish(spillway_buf *b, const spillway_keys *k, const spillway_publish_args *a, bool eval,
                         const char *sha)
{
    char maxlen[16], ttl[16], kttl[16], window[24];
    size_t mark = b->len;
    /* The window's argument only when there is one: 12 elements otherwise,
     * as before backlog_window (the script reads a missing one as 0). */
    int bad = spillway_buf_begin(b, a->backlog_window_ms > 0 ? 13 : 12);

    snprintf(maxlen, sizeof(maxlen), "%u", a->backlog_size);
    snprintf(ttl, sizeof(ttl), "%u", a->backlog_ttl_s);
    snprintf(kttl, sizeof(kttl), "%u", a->key_ttl_ms);
    snprintf(window, sizeof(window), "%llu", (unsigned long long)a->backlog_window_ms);
    if (eval || sha == NULL || sha[0] == '\0') {
        bad |= spillway_buf_arg(b, "EVAL", 4);
        bad |= spillway_buf_arg(b, spillway_lua_publish, strlen(spillway_lua_publish));
    } else {
        bad |= spillway_buf_arg(b, "EVALSHA", 7);
        bad |= spillway_buf_arg(b, sha, 40);
    }
    bad |= spillway_buf_arg(b, "4", 1);
    bad |= spillway_buf_arg(b, k->id, strlen(k->id));
    bad |= spillway_buf_arg2(b, k->stream, k->stream_len, a->channel, a->chlen);
    bad |= spillway_buf_arg2(b, k->idem, k->idem_len, a->key, a->keylen);
    bad |= spillway_buf_arg(b, k->since, strlen(k->since));
    bad |= spillway_buf_arg2(b, k->chan, k->chan_len, a->channel, a->chlen);
    bad |= spillway_buf_arg(b, a->body, a->bodylen);
    bad |= spillway_buf_arg(b, maxlen, strlen(maxlen));
    bad |= spillway_buf_arg(b, ttl, strlen(ttl));
    bad |= spillway_buf_arg(b, kttl, strlen(kttl));
    if (a->backlog_window_ms > 0) bad |= spillway_buf_arg(b, window, strlen(window));
    if (bad) {
        b->len = mark;
        return -1;
    }
    return 0;
}

/* Helpers are repeated in both scripts: a script is one unit.
 *
 * Every backlog entry records, besides the frame (field f), the id of the
 * message before it on the same channel (field p). On resume, the first
 * entry after the cursor tells whether anything between the cursor and it is
 * gone: if its predecessor is newer than the cursor, that predecessor was
 * trimmed. Exact, and it needs no XINFO (Redis 7.0 does not count trimmed
 * entries in max-deleted-entry-id). A stream that starts afresh records as
 * predecessor "now minus the TTL": an earlier stream of the channel that
 * expired held nothing newer.
 *
 * backlog_window trims by age too (XTRIM MINID, after the predecessor is
 * read, so p stays the real last id even when the trim empties the stream):
 * an entry of the window, or the newest, always survives; what the trim took
 * shows as a predecessor newer than the cursor, a reset like MAXLEN's. */

const char spillway_lua_publish[] =
    "local function parse(s)\n"
    "  if not s then return nil end\n"
    "  local a, b = string.match(s, '^(%d+)%-(%d+)$')\n"
    "  if not a then return nil end\n"
    "  return tonumber(a), tonumber(b)\n"
    "end\n"
    "-- A repeat under an idempotency key that still lives (a retry whose reply\n"
    "-- was lost): the first id, and nothing else happens.\n"
    "if KEYS[3] then\n"
    "  local first = redis.call('GET', KEYS[3])\n"
    "  if first then return first end\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local ms, seq = now, 0\n"
    "local lms, lseq = parse(redis.call('GET', KEYS[1]))\n"
    "if lms and lms >= ms then ms = lms; seq = lseq + 1 end\n"
    "local maxlen, ttl, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6] or '0')\n"
    "local prev = '0-0'\n"
    "if maxlen > 0 then\n"
    "  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)\n"
    "  if #last > 0 then\n"
    "    prev = last[1][1]\n"
    "    -- The stream is ahead of the id key (the key was lost): continue after it.\n"
    "    local sms, sseq = parse(prev)\n"
    "    if sms > ms or (sms == ms and sseq >= seq) then ms = sms; seq = sseq + 1 end\n"
    "  elseif ttl > 0 then\n"
    "    prev = string.format('%d-0', now - ttl * 1000)\n"
    "  end\n"
    "end\n"
    "local id = string.format('%d-%d', ms, seq)\n"
    "local frame = 'id: ' .. id .. '\\n' .. ARGV[2]\n"
    "-- Before any write: a Redis without MINID (before 6.2) fails the publish whole.\n"
    "if maxlen > 0 and window > 0 then\n"
    "  local ok = redis.pcall('XTRIM', KEYS[2], 'MINID', '~', string.format('%d', now - window))\n"
    "  if type(ok) == 'table' and ok.err then\n"
    "    return redis.error_reply('backlog_window needs Redis 6.2 or later (XTRIM MINID): ' .. ok.err)\n"
    "  end\n"
    "end\n"
    "if maxlen > 0 then\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, id, 'f', frame, 'p', prev)\n"
    "  if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end\n"
    "end\n"
    "redis.call('SET', KEYS[1], id)\n"
    "-- No id key: a fresh namespace, or a Redis that lost its data. Its\n"
    "-- history starts here; a cursor from before it gets a reset.\n"
    "if not lms then redis.call('SET', KEYS[4], id) end\n"
    "-- Stored last, once everything else went through: a publish that failed\n"
    "-- half-way leaves no key behind that would turn its retry into a no-op.\n"
    "if KEYS[3] then redis.call('SET', KEYS[3], id, 'NX', 'PX', ARGV[5]) end\n"
    "redis.call('PUBLISH', ARGV[1], frame)\n"
    "return id\n";

const char spillway_lua_resume[] =
    "local function parse(s)\n"
    "  if not s then return nil end\n"
    "  local a, b = string.match(s, '^(%d+)%-(%d+)$')\n"
    "  if not a then return nil end\n"
    "  return tonumber(a), tonumber(b)\n"
    "end\n"
    "local function after(ams, aseq, bms, bseq)\n"
    "  return ams > bms or (ams == bms and aseq > bseq)\n"
    "end\n"
    "local function field(fields, name)\n"
    "  for j = 1, #fields, 2 do if fields[j] == name then return fields[j + 1] end end\n"
    "end\n"
    "local mode, ttl, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local last = redis.call('GET', KEYS[1])\n"
    "local lms, lseq = parse(last)\n"
    "local sms, sseq = parse(redis.call('GET', KEYS[2]))\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local resets, entries = {}, {}\n"
    "for i = 1, #KEYS - 2 do\n"
    "  resets[i] = 0\n"
    "  local key, cursor = KEYS[i + 2], ARGV[3 + i]\n"
    "  local cms, cseq = parse(cursor)\n"
    "  if mode ~= 'n' and cms then\n"
    "    if mode == 'c' and (not lms or after(cms, cseq, lms, lseq)) then\n"
    "      -- A cursor from the future, or Redis lost the id key: nothing can be told.\n"
    "      resets[i] = 1\n"
    "    elseif mode == 'c' and sms and after(sms, sseq, cms, cseq) then\n"
    "      -- This Redis's history starts after the cursor (it lost its data\n"
    "      -- and started afresh): what came in between is gone.\n"
    "      resets[i] = 1\n"
    "    else\n"
    "      local items\n"
    "      if count > 0 then\n"
    "        items = redis.call('XRANGE', key, '(' .. cursor, '+', 'COUNT', count)\n"
    "        -- A full page: there may be more after its last entry.\n"
    "        if #items == count then resets[i] = 2 end\n"
    "      else\n"
    "        items = redis.call('XRANGE', key, '(' .. cursor, '+')\n"
    "      end\n"
    "      if #items == 0 then\n"
    "        -- Nothing newer. Unless the stream expired with newer messages in it.\n"
    "        if mode == 'c' and ttl > 0 and cms + ttl * 1000 <= now and redis.call('EXISTS', key) == 0 then\n"
    "          resets[i] = 1\n"
    "        end\n"
    "      else\n"
    "        local pms, pseq = parse(field(items[1][2], 'p'))\n"
    "        if mode == 'c' and pms and after(pms, pseq, cms, cseq) then\n"
    "          resets[i] = 1\n"
    "        else\n"
    "          for _, e in ipairs(items) do\n"
    "            local ems, eseq = parse(e[1])\n"
    "            entries[#entries + 1] = {ems, eseq, i - 1, field(e[2], 'f')}\n"
    "          end\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  elseif mode == 'c' then\n"
    "    resets[i] = 1\n"
    "  end\n"
    "end\n"
    "table.sort(entries, function(a, b) return after(b[1], b[2], a[1], a[2]) end)\n"
    "local flat = {}\n"
    "for _, e in ipairs(entries) do flat[#flat + 1] = e[3]; flat[#flat + 1] = e[4] end\n"
    "return {last or string.format('%d-0', now), resets, flat}\n";

/* The witness (scripts.h): KEYS id, since, the channel's stream; ARGV the
 * id, the backlog TTL in seconds, "1" when channels keep a backlog. Returns
 * 1 when the id proved missing (since and the id key then move up to now:
 * other processes' messages may have gone with it, which no one here can
 * name, so every cursor from before gets a reset, as after a Redis that
 * lost everything), else 0. Entries are trimmed oldest first, and a replica applies writes in
 * order, so the id alone tells: present, trimmed (the entry after it names
 * it, or something after it, as predecessor), or lost (this history went
 * from an older entry straight past it, or stops before it). */
const char spillway_lua_witness[] =
    "local function parse(s)\n"
    "  if not s then return nil end\n"
    "  local a, b = string.match(s, '^(%d+)%-(%d+)$')\n"
    "  if not a then return nil end\n"
    "  return tonumber(a), tonumber(b)\n"
    "end\n"
    "local function after(ams, aseq, bms, bseq)\n"
    "  return ams > bms or (ams == bms and aseq > bseq)\n"
    "end\n"
    "local function field(fields, name)\n"
    "  for j = 1, #fields, 2 do if fields[j] == name then return fields[j + 1] end end\n"
    "end\n"
    "local wms, wseq = parse(ARGV[1])\n"
    "if not wms then return 0 end\n"
    "local ttl = tonumber(ARGV[2])\n"
    "local ims, iseq = parse(redis.call('GET', KEYS[1]))\n"
    "local lost = 0\n"
    "if not ims or after(wms, wseq, ims, iseq) then\n"
    "  -- The id key is behind it: it never reached this history.\n"
    "  lost = 1\n"
    "elseif ARGV[3] == '1' and #redis.call('XRANGE', KEYS[3], ARGV[1], ARGV[1]) == 0 then\n"
    "  local nxt = redis.call('XRANGE', KEYS[3], '(' .. ARGV[1], '+', 'COUNT', 1)\n"
    "  if #nxt > 0 then\n"
    "    local pms, pseq = parse(field(nxt[1][2], 'p'))\n"
    "    if pms ~= nil and after(wms, wseq, pms, pseq) then lost = 2 end\n"
    "  elseif redis.call('EXISTS', KEYS[3]) == 1 then\n"
    "    lost = 3 -- the stream's newest entry is older\n"
    "  else\n"
    "    -- No stream: expired (its TTL ran out after this entry), or lost.\n"
    "    local t = redis.call('TIME')\n"
    "    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "    if ttl == 0 or wms + ttl * 1000 > now then lost = 4 end\n"
    "  end\n"
    "end\n"
    "if lost == 0 then return 0 end\n"
    "-- What else went with it is unknown (other processes' messages): the\n"
    "-- history this Redis vouches for starts now, as after losing all of it.\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local mms = math.max(now, wms + 1)\n"
    "local mark = string.format('%d-0', mms)\n"
    "if not ims or ims < mms then redis.call('SET', KEYS[1], mark) end\n"
    "local sms = parse(redis.call('GET', KEYS[2]))\n"
    "if not sms or sms < mms then redis.call('SET', KEYS[2], mark) end\n"
    "return lost\n";

int spillway_buf_witness(spillway_buf *b, const spillway_keys *k, const char *chan, size_t chlen, const char *id,
                         uint32_t backlog_ttl_s, bool backlog)
{
    char ttl[16];
    size_t mark = b->len;
    int bad = spillway_buf_begin(b, 9);

    snprintf(ttl, sizeof(ttl), "%u", backlog_ttl_s);
    bad |= spillway_buf_arg(b, "EVAL", 4);
    bad |= spillway_buf_arg(b, spillway_lua_witness, strlen(spillway_lua_witness));
    bad |= spillway_buf_arg(b, "3", 1);
    bad |= spillway_buf_arg(b, k->id, strlen(k->id));
    bad |= spillway_buf_arg(b, k->since, strlen(k->since));
    bad |= spillway_buf_arg2(b, k->stream, k->stream_len, chan, chlen);
    bad |= spillway_buf_arg(b, id, strlen(id));
    bad |= spillway_buf_arg(b, ttl, strlen(ttl));
    bad |= spillway_buf_arg(b, backlog ? "1" : "0", 1);
    if (bad) {
        b->len = mark;
        return -1;
    }
    return 0;
}

const char spillway_lua_cursor[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v then return v end\n"
    "local t = redis.call('TIME')\n"
    "v = string.format('%d-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))\n"
    "redis.call('SET', KEYS[1], v)\n"
    "redis.call('SET', KEYS[2], v)\n"
    "return v\n";

const char spillway_lua_barrier[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if not v then\n"
    "  local t = redis.call('TIME')\n"
    "  v = string.format('%d-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))\n"
    "  redis.call('SET', KEYS[1], v)\n"
    "  redis.call('SET', KEYS[2], v)\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. v)\n"
    "return v\n";
