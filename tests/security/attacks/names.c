/* File names are bytes: names that are not UTF-8 work in every call that takes or returns
 * one, and survive a checkpoint. Run plain, it makes and checks the files; with "hold" it
 * then waits holding one open; with "check", it checks what such a run left. */
#include "attack.h"
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIR_NAME "/tmp/d\xff\xfe"
#define FILE_NAME DIR_NAME "/f\x80\xc3("
#define MOVED_NAME DIR_NAME "/g\xe9"
#define LINK_NAME "/tmp/l\xfe"

static int listed(const char *dir, const char *name) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while (d && (e = readdir(d)))
        found |= strcmp(e->d_name, name) == 0;
    if (d)
        closedir(d);
    return found;
}

static void check(void) {
    struct stat s;
    CHECK("stat", stat(MOVED_NAME, &s) == 0 && s.st_size == 5, "stat of the moved file");
    CHECK("readdir", listed(DIR_NAME, "g\xe9"), "the name is not listed as it was made");
    char buf[64] = {0};
    ssize_t n = readlink(LINK_NAME, buf, sizeof buf);
    CHECK("readlink", n == (ssize_t)strlen(MOVED_NAME) && memcmp(buf, MOVED_NAME, n) == 0, "readlink gave %zd", n);
    int fd = open(LINK_NAME, O_RDONLY);
    n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
    CHECK("through-the-link", n == 5 && memcmp(buf, "bytes", 5) == 0, "read %zd", n);
    CHECK("chdir-getcwd", chdir(DIR_NAME) == 0 && getcwd(buf, sizeof buf) && strcmp(buf, DIR_NAME) == 0,
          "getcwd gave %s", buf);
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    n = readlink(proc, buf, sizeof buf);
    CHECK("proc-fd", n == (ssize_t)strlen(MOVED_NAME) || n > 0, "readlink %s gave %zd", proc, n);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "check") == 0) {
        check();
        return DONE();
    }
    errno = 0;
    int fd = open("/\xff\xfe", O_RDONLY);
    CHECK("missing-in-rootfs", fd < 0 && errno == ENOENT, "open of a missing non-UTF-8 name");
    CHECK("mkdir", mkdir(DIR_NAME, 0755) == 0, "mkdir");
    fd = open(FILE_NAME, O_CREAT | O_WRONLY, 0644);
    CHECK("create", fd >= 0 && write(fd, "bytes", 5) == 5, "create and write");
    close(fd);
    CHECK("rename", rename(FILE_NAME, MOVED_NAME) == 0 && access(FILE_NAME, F_OK) != 0, "rename");
    CHECK("symlink", symlink(MOVED_NAME, LINK_NAME) == 0, "symlink");
    char longname[300];
    memset(longname, 0, sizeof longname);
    strcpy(longname, "/tmp/");
    for (int i = 0; i < 128; i++)
        strcat(longname, "\xc3\xa9");  /* 128 two-byte characters: 256 bytes, over NAME_MAX */
    errno = 0;
    CHECK("name-max-counts-bytes", open(longname, O_CREAT | O_WRONLY, 0644) < 0 && errno == ENAMETOOLONG,
          "a 256-byte name was accepted");
    check();
    printf("made\n");
    fflush(stdout);
    if (!failures && argc > 1 && strcmp(argv[1], "hold") == 0)
        pause();
    return DONE();
}
