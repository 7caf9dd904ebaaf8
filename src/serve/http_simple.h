/* The keep-alive fast path of `fastka serve`: recognise a read that holds nothing but
 * complete, plain HTTP/1.1 GET/HEAD requests. It knows no route: the caller names the one
 * path it answers differently (its `other` path), whose requests are never plain.
 *
 * "Plain" is a strict subset of RFC 9112 that llhttp parses the same way: request line
 * `GET|HEAD SP origin-form SP HTTP/1.1 CRLF`, the target made of unreserved, sub-delims,
 * ":", "@", "/", "?" and "%" only; header lines `token ":" OWS value CRLF` with values of
 * visible ASCII, SP and HTAB, not ending in whitespace; an empty line. Anything else (another method or version,
 * Connection, Proxy-Connection, Content-Length, Transfer-Encoding, Expect or Upgrade headers,
 * obs-fold, bare LF, obs-text, a partial request, a target whose path is the caller's `other`
 * path, a head over the size limit) is not
 * plain: the caller parses the whole read the general way. Nothing is ever half-accepted.
 */
#ifndef FASTKA_SERVE_HTTP_SIMPLE_H
#define FASTKA_SERVE_HTTP_SIMPLE_H

#include <stddef.h>

/* At most this many requests are recognised in one read (a longer run is not plain). */
#define FK_HTTP_MAX_BATCH 512

/* If buf[0..len) is exactly n >= 1 plain requests (n <= max_reqs, n <= FK_HTTP_MAX_BATCH),
 * set is_head[i] to 1 for a HEAD and 0 for a GET and return n; otherwise return 0.
 * max_head bounds each request's target plus header lines ("name: value\r\n"), in bytes,
 * counted as the general path counts them. A request whose target path (before any "?") is
 * exactly other[0..other_len) is not plain (other_len 0: no such path). */
int fk_http_simple(const char *buf, size_t len, size_t max_head, int max_reqs,
                   const char *other, size_t other_len, unsigned char *is_head);

#endif
