/* link(2) and rename(2) across mounts fail with EXDEV: a hard link never joins two file
 * systems (the rootfs, a tmpfs at /tmp, a read-write bind mount at /rw). */
#include "attack.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static void make(const char *path) {
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) {
        write(fd, "x", 1);
        close(fd);
    }
}

int main(void) {
    make("/tmp/a");
    make("/rw/b");
    make("/upper");
    errno = 0;
    CHECK("link-rootfs-to-tmpfs", link("/mounts", "/tmp/exe") != 0 && errno == EXDEV, "link of a rootfs file into /tmp");
    errno = 0;
    CHECK("link-written-rootfs-to-tmpfs", link("/upper", "/tmp/upper") != 0 && errno == EXDEV, "link /upper -> /tmp");
    errno = 0;
    CHECK("link-bind-to-tmpfs", link("/rw/b", "/tmp/b") != 0 && errno == EXDEV, "link /rw/b -> /tmp");
    errno = 0;
    CHECK("link-tmpfs-to-rootfs", link("/tmp/a", "/a") != 0 && errno == EXDEV, "link /tmp/a -> /");
    errno = 0;
    CHECK("link-tmpfs-to-bind", link("/tmp/a", "/rw/a") != 0 && errno == EXDEV, "link /tmp/a -> /rw");
    errno = 0;
    CHECK("rename-tmpfs-to-rootfs", rename("/tmp/a", "/a") != 0 && errno == EXDEV, "rename /tmp/a -> /");
    errno = 0;
    CHECK("rename-rootfs-to-tmpfs", rename("/upper", "/tmp/upper") != 0 && errno == EXDEV, "rename / -> /tmp");
    errno = 0;
    CHECK("rename-bind-to-rootfs", rename("/rw/b", "/b") != 0 && errno == EXDEV, "rename /rw/b -> /");
    CHECK("link-within-tmpfs", link("/tmp/a", "/tmp/a2") == 0, "link inside /tmp");
    CHECK("link-within-rootfs", link("/upper", "/upper2") == 0, "link inside the rootfs");
    CHECK("rename-within-tmpfs", rename("/tmp/a2", "/tmp/a3") == 0, "rename inside /tmp");
    struct stat s;
    CHECK("sources-kept", stat("/tmp/a", &s) == 0 && stat("/rw/b", &s) == 0 && stat("/upper", &s) == 0,
          "a refused call changed its source");
    errno = 0;
    CHECK("rename-mount-point", rename("/tmp", "/tmp-moved") != 0 && errno == EBUSY, "rename of /tmp itself");
    return DONE();
}
