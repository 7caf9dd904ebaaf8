/* Which socket option sets each keepalive field on this platform, in which unit, and the
 * range the platform accepts. fastka/_platform.py holds the same table for the fallback
 * (and for validation); tests/test_platform.py checks the two agree on the platform that
 * runs the tests.
 *
 *   field         Linux              macOS                  FreeBSD        Solaris/illumos  Windows 10 1709+ / older
 *   idle          TCP_KEEPIDLE (s)   TCP_KEEPALIVE 0x10 (s) TCP_KEEPIDLE   TCP_KEEPIDLE     TCP_KEEPIDLE (s) / SIO_KEEPALIVE_VALS (ms)
 *   interval      TCP_KEEPINTVL (s)  TCP_KEEPINTVL 0x101    TCP_KEEPINTVL  TCP_KEEPINTVL    TCP_KEEPINTVL (s) / SIO_KEEPALIVE_VALS (ms)
 *   count         TCP_KEEPCNT        TCP_KEEPCNT 0x102      TCP_KEEPCNT    TCP_KEEPCNT      TCP_KEEPCNT (1703+) / fixed at 10
 *   user_timeout  TCP_USER_TIMEOUT   TCP_RXT_CONNDROPTIME   (none)         (none)           TCP_MAXRT (s)
 *                 (ms)               0x80 (s)
 */
#ifndef FASTKA_PLATFORM_H
#define FASTKA_PLATFORM_H

#include <limits.h>

#if defined(_WIN32)
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mstcpip.h>
#else
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#endif

/* Units a platform option takes: the core converts fastka's seconds / milliseconds. */
#define FK_UNIT_S 1
#define FK_UNIT_MS 2

#if defined(__linux__)
#define FK_PLATFORM "linux"
#define FK_TCP_KEEPIDLE TCP_KEEPIDLE
#define FK_TCP_KEEPIDLE_NAME "TCP_KEEPIDLE"
#define FK_TCP_KEEPINTVL TCP_KEEPINTVL
#define FK_TCP_KEEPCNT TCP_KEEPCNT
#ifndef TCP_USER_TIMEOUT
#define TCP_USER_TIMEOUT 18 /* linux/tcp.h, since 2.6.37 */
#endif
#define FK_TCP_USER_TIMEOUT TCP_USER_TIMEOUT
#define FK_TCP_USER_TIMEOUT_NAME "TCP_USER_TIMEOUT"
#define FK_USER_TIMEOUT_UNIT FK_UNIT_MS
/* include/net/tcp.h: MAX_TCP_KEEPIDLE/MAX_TCP_KEEPINTVL 32767, MAX_TCP_KEEPCNT 127;
 * TCP_USER_TIMEOUT takes a non-negative int of milliseconds. */
#define FK_IDLE_MIN 1
#define FK_IDLE_MAX 32767
#define FK_INTERVAL_MIN 1
#define FK_INTERVAL_MAX 32767
#define FK_COUNT_MIN 1
#define FK_COUNT_MAX 127
#define FK_USER_TIMEOUT_MS_MAX INT_MAX

#elif defined(__APPLE__)
#define FK_PLATFORM "darwin"
/* netinet/tcp.h: the idle time is TCP_KEEPALIVE; TCP_KEEPINTVL/TCP_KEEPCNT since 10.8. */
#define FK_TCP_KEEPIDLE 0x10
#define FK_TCP_KEEPIDLE_NAME "TCP_KEEPALIVE"
#define FK_TCP_KEEPINTVL 0x101
#define FK_TCP_KEEPCNT 0x102
/* TCP_RXT_CONNDROPTIME: seconds of retransmission after which the connection drops. */
#define FK_TCP_USER_TIMEOUT 0x80
#define FK_TCP_USER_TIMEOUT_NAME "TCP_RXT_CONNDROPTIME"
#define FK_USER_TIMEOUT_UNIT FK_UNIT_S
/* XNU accepts 0..UINT32_MAX / TCP_RETRANSHZ (1000) seconds and an int32 count. */
#define FK_IDLE_MIN 1
#define FK_IDLE_MAX 4294967
#define FK_INTERVAL_MIN 1
#define FK_INTERVAL_MAX 4294967
#define FK_COUNT_MIN 1
#define FK_COUNT_MAX INT_MAX
#define FK_USER_TIMEOUT_MS_MAX 2147483000

#elif defined(__FreeBSD__)
#define FK_PLATFORM "freebsd"
/* tcp(4): TCP_KEEPIDLE / TCP_KEEPINTVL in seconds (at most UINT_MAX / hz; hz = 1000 by
 * default), TCP_KEEPCNT a probe count. No per-socket user timeout. */
#define FK_TCP_KEEPIDLE TCP_KEEPIDLE
#define FK_TCP_KEEPIDLE_NAME "TCP_KEEPIDLE"
#define FK_TCP_KEEPINTVL TCP_KEEPINTVL
#define FK_TCP_KEEPCNT TCP_KEEPCNT
#define FK_IDLE_MIN 1
#define FK_IDLE_MAX 4294967
#define FK_INTERVAL_MIN 1
#define FK_INTERVAL_MAX 4294967
#define FK_COUNT_MIN 1
#define FK_COUNT_MAX INT_MAX

#elif defined(__sun)
#define FK_PLATFORM "sunos"
/* Solaris 11.4 and illumos: TCP_KEEPIDLE 0x22, TCP_KEEPCNT 0x23, TCP_KEEPINTVL 0x24, in
 * seconds; the idle time must be 10 s .. 10 days (tcp_keepalive_interval's range). */
#define FK_TCP_KEEPIDLE 0x22
#define FK_TCP_KEEPIDLE_NAME "TCP_KEEPIDLE"
#define FK_TCP_KEEPCNT 0x23
#define FK_TCP_KEEPINTVL 0x24
#define FK_IDLE_MIN 10
#define FK_IDLE_MAX 864000
#define FK_INTERVAL_MIN 1
#define FK_INTERVAL_MAX 864000
#define FK_COUNT_MIN 1
#define FK_COUNT_MAX INT_MAX

#elif defined(_WIN32)
#define FK_PLATFORM "win32"
/* ws2ipdef.h: TCP_KEEPIDLE 3 and TCP_KEEPINTVL 17 (Windows 10 1709+), TCP_KEEPCNT 16
 * (1703+), all in seconds; TCP_MAXRT 5 (seconds of retransmission before the connection
 * is aborted). Older Windows: SIO_KEEPALIVE_VALS sets idle and interval together in
 * milliseconds, and always sends 10 probes. */
#define FK_TCP_KEEPIDLE 3
#define FK_TCP_KEEPIDLE_NAME "TCP_KEEPIDLE"
#define FK_TCP_KEEPINTVL 17
#define FK_TCP_KEEPCNT 16
#define FK_TCP_USER_TIMEOUT 5
#define FK_TCP_USER_TIMEOUT_NAME "TCP_MAXRT"
#define FK_USER_TIMEOUT_UNIT FK_UNIT_S
#define FK_WIN_LEGACY_COUNT 10
/* SIO_KEEPALIVE_VALS holds ULONG milliseconds; fastka keeps every field within INT_MAX ms. */
#define FK_IDLE_MIN 1
#define FK_IDLE_MAX 2147483
#define FK_INTERVAL_MIN 1
#define FK_INTERVAL_MAX 2147483
#define FK_COUNT_MIN 1
#define FK_COUNT_MAX 255
#define FK_USER_TIMEOUT_MS_MAX 2147483000

#else
#error "fastka's C core knows Linux, macOS, FreeBSD, Solaris/illumos and Windows; use the pure-Python fallback"
#endif

#ifndef FK_TCP_USER_TIMEOUT
#define FK_USER_TIMEOUT_MS_MAX 0 /* the platform has no per-socket user timeout */
#endif

#define FK_TCP_KEEPINTVL_NAME "TCP_KEEPINTVL"
#define FK_TCP_KEEPCNT_NAME "TCP_KEEPCNT"

#endif
