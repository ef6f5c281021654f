/*
 * Targets and identities: parsing the text form, matching a message's
 * targets against a stream's identity, and taking the targets line out of
 * a frame that came from Redis (targets.h).
 */
#include <string.h>

#include "common.h"
#include "frame.h"
#include "targets.h"

static bool id_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '@' || c == ':' || c == '+' || c == '/' || c == '-';
}

static int kind_of(char k)
{
    switch (k) {
    case 'u': return SW_TK_USER;
    case 'g': return SW_TK_GROUP;
    case 'c': return SW_TK_CLIENT;
    default: return -1;
    }
}

/* Checks the text and counts its ids per kind; NULL when well formed, else
 * why not. */
static const char *scan(const char *s, size_t len, bool identity, uint32_t n[SW_TK_KINDS])
{
    size_t i = 0;
    bool seen[SW_TK_KINDS] = {false, false, false};
    uint32_t total = 0;

    memset(n, 0, sizeof(uint32_t) * SW_TK_KINDS);
    if (len == 0) return "empty";
    while (i < len) {
        int k = i + 1 < len && s[i + 1] == '=' ? kind_of(s[i]) : -1;
        if (k < 0) return "a part is not u=, g= or c=";
        if (seen[k]) return "a part given twice";
        seen[k] = true;
        i += 2;
        for (;;) {
            size_t start = i;
            while (i < len && id_char((unsigned char)s[i])) i++;
            if (i == start) return "an empty id or a character outside A-Z a-z 0-9 _ . @ : + / -";
            if (i - start > SPILLWAY_TARGET_ID_MAX) return "an id over " SW_STR(SPILLWAY_TARGET_ID_MAX) " bytes";
            n[k]++;
            if (++total > SPILLWAY_TARGET_IDS) return "more than " SW_STR(SPILLWAY_TARGET_IDS) " ids";
            if (i == len || s[i] == ';') break;
            if (s[i] != ',') return "a character outside A-Z a-z 0-9 _ . @ : + / -";
            i++;
        }
        if (i < len) {
            i++; /* ';' */
            if (i == len) return "a trailing ;";
        }
    }
    if (identity && (n[SW_TK_USER] > 1 || n[SW_TK_CLIENT] > 1)) return "an identity has one user and one client at most";
    return NULL;
}

spillway_targets *spillway_targets_parse(const char *s, size_t len, bool identity, const char **why)
{
    uint32_t n[SW_TK_KINDS], at[SW_TK_KINDS], total;
    spillway_targets *t;
    size_t i = 0;
    const char *bad = scan(s, len, identity, n);

    if (bad != NULL) {
        *why = bad;
        return NULL;
    }
    total = n[0] + n[1] + n[2];
    t = malloc(sizeof(*t) + total * sizeof(spillway_target_id) + len + 1);
    if (t == NULL) {
        *why = "out of memory";
        return NULL;
    }
    t->refs = 1;
    t->ids = (spillway_target_id *)(t + 1);
    t->text = (char *)(t->ids + total);
    memcpy(t->text, s, len);
    t->text[len] = '\0';
    for (int k = 0, first = 0; k < SW_TK_KINDS; first += (int)n[k], k++) {
        t->n[k] = n[k];
        t->first[k] = (uint32_t)first;
        at[k] = (uint32_t)first;
    }
    while (i < len) {
        int k = kind_of(s[i]);
        i += 2;
        for (;;) {
            size_t start = i;
            while (i < len && s[i] != ',' && s[i] != ';') i++;
            t->ids[at[k]++] = (spillway_target_id){(uint32_t)start, (uint16_t)(i - start)};
            if (i == len || s[i] == ';') break;
            i++;
        }
        if (i < len) i++;
    }
    return t;
}

/* Whether some id of kind k in a is also one of kind k in b. */
static bool share(const spillway_targets *a, const spillway_targets *b, int k)
{
    for (uint32_t i = 0; i < a->n[k]; i++) {
        const spillway_target_id *x = &a->ids[a->first[k] + i];
        for (uint32_t j = 0; j < b->n[k]; j++) {
            const spillway_target_id *y = &b->ids[b->first[k] + j];
            if (x->len == y->len && memcmp(a->text + x->off, b->text + y->off, x->len) == 0) return true;
        }
    }
    return false;
}

bool spillway_targets_match(const spillway_targets *t, const spillway_targets *who)
{
    if (t == NULL) return true;
    if (t->n[SW_TK_USER] + t->n[SW_TK_GROUP] > 0) {
        if (who == NULL || !(share(t, who, SW_TK_USER) || share(t, who, SW_TK_GROUP))) return false;
    }
    if (t->n[SW_TK_CLIENT] > 0 && (who == NULL || !share(t, who, SW_TK_CLIENT))) return false;
    return true;
}

int spillway_targets_take(spillway_frame *f, spillway_targets **out, const char **why)
{
    static const char field[] = SPILLWAY_TARGETS_FIELD;
    const size_t flen = sizeof(field) - 1;
    const char *nl = memchr(f->data, '\n', f->len), *end;
    size_t at, line;

    *out = NULL;
    if (nl == NULL) return 0;
    at = (size_t)(nl - f->data) + 1;
    if (f->len - at < flen || memcmp(f->data + at, field, flen) != 0) return 0;
    end = memchr(f->data + at + flen, '\n', f->len - at - flen);
    if (end == NULL) {
        *why = "an x-targets line without its end";
        return -1;
    }
    *out = spillway_targets_parse(f->data + at + flen, (size_t)(end - f->data) - at - flen, false, why);
    if (*out == NULL) return -1;
    line = (size_t)(end - f->data) + 1 - at;
    memmove(f->data + at, f->data + at + line, f->len - at - line);
    f->len -= (uint32_t)line;
    return 0;
}
