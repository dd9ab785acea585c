/*
 * sockbypass.h: C ABI of libsockbypass_guest.a, the guest side of sockbypass's fast path
 * (virtio-spec/SPEC.md chapter 13).
 *
 * Link: cc prog.c -Ipath/to/include path/to/libsockbypass_guest.a -lpthread -ldl -lm
 *
 * Every function checks its pointers for NULL (EINVAL). Functions returning int or ssize_t
 * return -1 and set errno on failure; functions returning a pointer return NULL and set
 * errno. errno values: EAGAIN (non-blocking, would block), ECONNRESET (the connection was
 * reset, its ring broke, or the daemon restarted), ECONNREFUSED (refused by policy or a
 * limit), EPROTO (control-channel protocol error), EPIPE (writing after a shutdown or after
 * the other side closed), EBADF (stream closed), ENODEV (no fast-path window in this VM),
 * or the kernel's errno (EACCES: no permission to map the window's resource2).
 *
 * Threads: an sb_handle may be used from several threads at once; an sb_stream by one
 * thread at a time. Streams stay usable after sb_close_handle until they are closed.
 */
#ifndef SOCKBYPASS_H
#define SOCKBYPASS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* This process's fast path: its windows and its control channel to the daemon. */
typedef struct SbHandle sb_handle;
/* One connection: through the rings, or a plain AF_VSOCK stream (the fallback). */
typedef struct SbStream sb_stream;

/* Finds and maps the windows (/sys/bus/pci/devices, 1af4:1110, resource2) and opens the
 * control channel (AF_VSOCK, CID 2, port 0x53425000). NULL with errno on failure. */
sb_handle *sb_open(void);

/* Closes the handle (NULL: nothing). Not while another thread is inside a call on it. */
void sb_close_handle(sb_handle *h);

/* The control socket: readable when a daemon message is pending (for poll/epoll). It
 * belongs to the handle: do not close or read it. */
int sb_control_fd(const sb_handle *h);

/* Connects to cid:port: through the fast path, or plain vsock when the daemon refuses the
 * fast path with a reason that allows it (no window, no fast-path listener, window full).
 * NULL with errno (ECONNREFUSED for a policy or limit refusal). */
sb_stream *sb_connect(const sb_handle *h, uint32_t cid, uint32_t port);

/* Accepts fast-path connections on port / stops that. 0, or -1 with errno. */
int sb_listen(const sb_handle *h, uint32_t port);
int sb_unlisten(const sb_handle *h, uint32_t port);

/* The next incoming fast-path connection on a listening port, accepted (blocking). */
sb_stream *sb_accept(const sb_handle *h);

/* Reads up to len bytes: the count, 0 at end of stream, -1 with errno. */
ssize_t sb_read(sb_stream *s, void *buf, size_t len);

/* Writes up to len bytes (at most the ring's free space): the count, -1 with errno. */
ssize_t sb_write(sb_stream *s, const void *buf, size_t len);

/* Non-blocking (on != 0: EAGAIN instead of waiting) or blocking. 0, or -1 with errno. */
int sb_set_nonblocking(sb_stream *s, int on);

/* SHUT_RD, SHUT_WR or SHUT_RDWR. SHUT_WR ends the stream for the other side. */
int sb_shutdown(sb_stream *s, int how);

/* 1: through the fast path, 0: plain vsock, -1 (EINVAL) for NULL. */
int sb_is_fast(const sb_stream *s);

/* Closes and frees the stream (sends CLOSE for a fast one). 0, or -1 with errno; the
 * stream is freed either way. */
int sb_close(sb_stream *s);

#ifdef __cplusplus
}
#endif

#endif /* SOCKBYPASS_H */
