#include "idem.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

bool spillway_idem_key_ok(const char *key, size_t len)
{
    if (key == NULL || len == 0 || len > SPILLWAY_IDEM_KEY_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if (key[i] == '\r' || key[i] == '\n' || key[i] == '\0') return false;
    return true;
}

static atomic_uint_fast64_t fallback_counter;

void spillway_idem_generate(char out[SPILLWAY_IDEM_GEN_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t raw[SPILLWAY_IDEM_GEN_LEN / 2];
    size_t have = 0;

    while (have < sizeof(raw)) {
        ssize_t n = getrandom(raw + have, sizeof(raw) - have, GRND_NONBLOCK);
        if (n > 0) {
            have += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            break; /* EAGAIN (no entropy yet at boot), ENOSYS: the fallback */
        }
    }
    if (have < sizeof(raw)) {
        /* Unique without randomness: no two calls in one process share the
         * counter, no two processes alive at once share a pid, and the
         * clock tells apart a pid that was reused. (Across machines this
         * relies on the clock alone; it is only the fallback.) */
        uint64_t parts[2];
        parts[0] = (spillway_wall_ms() << 22) ^ (uint64_t)(getpid() & 0x3fffff);
        parts[1] = atomic_fetch_add(&fallback_counter, 1);
        memcpy(raw, parts, sizeof(raw));
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[SPILLWAY_IDEM_GEN_LEN] = '\0';
}

uint32_t spillway_idem_generated_ttl_ms(const spillway_redis_config *rc)
{
    uint64_t window = (uint64_t)rc->connect_timeout_ms + 2u * (uint64_t)rc->command_timeout_ms;
    uint64_t ttl = SW_MAX(2u * window, (uint64_t)SPILLWAY_IDEM_GEN_TTL_MIN_MS);
    return (uint32_t)SW_MIN(ttl, (uint64_t)UINT32_MAX);
}

bool spillway_idem_may_resend(uint64_t first_ms, uint32_t ttl_ms, uint64_t now_ms,
                              uint32_t command_timeout_ms)
{
    return now_ms + command_timeout_ms < first_ms + ttl_ms;
}
