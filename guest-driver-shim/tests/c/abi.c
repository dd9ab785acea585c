/* Links against libsockbypass_guest.a through include/sockbypass.h and checks what works
 * without a VM: NULL checks and errno, and sb_open failing cleanly where there is no window
 * (argv[1]: the errno expected from sb_open, e.g. ENODEV). Prints "ok" on success. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "sockbypass.h"

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: %s failed (errno %d)\n", __FILE__, __LINE__, \
                    #cond, errno);                                              \
            return 1;                                                           \
        }                                                                       \
    } while (0)

int main(int argc, char **argv) {
    char buf[8];
    int expected_open_errno = argc > 1 ? atoi(argv[1]) : ENODEV;

    errno = 0;
    CHECK(sb_read(NULL, buf, sizeof buf) == -1 && errno == EINVAL);
    errno = 0;
    CHECK(sb_write(NULL, buf, sizeof buf) == -1 && errno == EINVAL);
    errno = 0;
    CHECK(sb_connect(NULL, 3, 5000) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(sb_accept(NULL) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(sb_listen(NULL, 1) == -1 && errno == EINVAL);
    errno = 0;
    CHECK(sb_set_nonblocking(NULL, 1) == -1 && errno == EINVAL);
    errno = 0;
    CHECK(sb_shutdown(NULL, SHUT_WR) == -1 && errno == EINVAL);
    errno = 0;
    CHECK(sb_close(NULL) == -1 && errno == EINVAL);
    CHECK(sb_is_fast(NULL) == -1);
    CHECK(sb_control_fd(NULL) == -1);
    sb_close_handle(NULL);

    errno = 0;
    sb_handle *h = sb_open();
    CHECK(h == NULL && errno == expected_open_errno);
    puts("ok");
    return 0;
}
