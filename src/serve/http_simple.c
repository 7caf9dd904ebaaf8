/* See http_simple.h. */
#include "http_simple.h"

#include <string.h>
#include <strings.h>

/* tchar (RFC 9110 5.6.2) */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* unreserved / sub-delims / ":" / "@" / "/" / "?" / "%" (RFC 3986) */
static int is_target_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("-._~!$&'()*+,;=:@/?%", c) != NULL;
}

/* the header names that change how a request is framed or answered */
static int is_special(const char *name, size_t n)
{
    static const char *const special[] = {
        "connection", "proxy-connection", "content-length", "transfer-encoding", "expect", "upgrade",
    };
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        if (strlen(special[i]) == n && strncasecmp(name, special[i], n) == 0)
            return 1;
    return 0;
}

/* One plain request at p[0..end): its length, or 0 when it is not plain or not complete. */
static size_t one_request(const char *p, const char *end, size_t max_head, const char *other,
                          size_t other_len, unsigned char *is_head)
{
    const char *s = p;
    size_t head = 0;

    if ((size_t)(end - s) >= 4 && memcmp(s, "GET ", 4) == 0) {
        *is_head = 0;
        s += 4;
    } else if ((size_t)(end - s) >= 5 && memcmp(s, "HEAD ", 5) == 0) {
        *is_head = 1;
        s += 5;
    } else {
        return 0;
    }
    const char *target = s;
    if (s == end || *s != '/')
        return 0;
    while (s < end && is_target_char((unsigned char)*s))
        s++;
    size_t tlen = (size_t)(s - target);
    const char *query = memchr(target, '?', tlen);
    size_t plen = query ? (size_t)(query - target) : tlen;
    if (other_len > 0 && plen == other_len && memcmp(target, other, other_len) == 0)
        return 0;
    head += tlen;
    if ((size_t)(end - s) < 11 || memcmp(s, " HTTP/1.1\r\n", 11) != 0)
        return 0;
    s += 11;
    for (;;) {
        if ((size_t)(end - s) < 2)
            return 0;
        if (s[0] == '\r' && s[1] == '\n')
            break;
        const char *name = s;
        while (s < end && is_tchar((unsigned char)*s))
            s++;
        size_t nlen = (size_t)(s - name);
        if (nlen == 0 || s == end || *s != ':' || is_special(name, nlen))
            return 0;
        s++;
        while (s < end && (*s == ' ' || *s == '\t'))
            s++;
        const char *value = s;
        while (s < end && ((unsigned char)*s >= 0x21 && (unsigned char)*s <= 0x7e ? 1 : (*s == ' ' || *s == '\t')))
            s++;
        if (s > value && (s[-1] == ' ' || s[-1] == '\t'))
            return 0; /* trailing whitespace: left to the general parser's rules */
        if ((size_t)(end - s) < 2 || s[0] != '\r' || s[1] != '\n')
            return 0;
        head += nlen + (size_t)(s - value) + 4;
        s += 2;
        if (head > max_head)
            return 0;
    }
    if (head > max_head)
        return 0;
    return (size_t)(s + 2 - p);
}

int fk_http_simple(const char *buf, size_t len, size_t max_head, int max_reqs,
                   const char *other, size_t other_len, unsigned char *is_head)
{
    const char *p = buf, *end = buf + len;
    int n = 0;

    while (p < end) {
        if (n >= max_reqs || n >= FK_HTTP_MAX_BATCH)
            return 0;
        size_t used = one_request(p, end, max_head, other, other_len, &is_head[n]);
        if (used == 0)
            return 0;
        p += used;
        n++;
    }
    return n;
}
