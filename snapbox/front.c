/*
 * The `snapbox` command's native front end.
 *
 * A Python interpreter costs tens of milliseconds to start and import the command line,
 * more than a whole `run` of a small program in a warm sandbox. When a warm pool serves
 * the command's --root (`snapbox warm`), this program hands the command over to it: it
 * sends its arguments, working directory, umask and environment with its stdin, stdout and
 * stderr (SCM_RIGHTS) over <root>/.warm.sock, passes on the signals it receives to the
 * pool's worker running the command, and exits with the worker's exit code. Otherwise, for
 * `warm` itself, and with SNAPBOX_WARM=0, it executes the Python command line
 * (`python3 -m snapbox`).
 *
 * Messages are those of snapbox.runtime.control: a little-endian u32 length, then a CBOR map.
 *   request: {"op": "cli", "argv": [b"..."], "cwd": b"...", "umask": N, "env": [b"K=V", ...]}
 *            (byte strings: arguments and paths need not be UTF-8)
 *   replies: {"ok": true, "pid": N} once the worker runs, then {"exit": N} at its end;
 *            or {"ok": false, "error": "..."} if the pool refuses.
 *
 * Built at install (setup.py): cc -O2 -DSNAPBOX_PYTHON='"/path/to/python3"' -o snapbox front.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SNAPBOX_PYTHON
#define SNAPBOX_PYTHON "python3"
#endif

extern char **environ;

static volatile sig_atomic_t worker_pid;
static volatile sig_atomic_t pending[65];
static volatile sig_atomic_t last_signal;

/* --- falling back to the Python command line ------------------------------------------ */

static void exec_python(int argc, char **argv)
{
    char **args = calloc((size_t)argc + 3, sizeof(char *));
    if (args == NULL) {
        fputs("snapbox: error: out of memory\n", stderr);
        exit(1);
    }
    args[0] = SNAPBOX_PYTHON;
    args[1] = "-m";
    args[2] = "snapbox";
    for (int i = 1; i < argc; i++)
        args[i + 2] = argv[i];
    execv(SNAPBOX_PYTHON, args);
    /* Not there (a wheel built on another machine): the interpreter beside this program, as
       in a virtual environment's bin, else the first python3 on PATH. */
    static char beside[4096];
    ssize_t n = readlink("/proc/self/exe", beside, sizeof beside - sizeof "python3");
    char *slash = n > 0 ? memrchr(beside, '/', (size_t)n) : NULL;
    if (slash != NULL) {
        strcpy(slash + 1, "python3");
        args[0] = beside;
        execv(beside, args);
    }
    args[0] = "python3";
    execvp("python3", args);
    fprintf(stderr, "snapbox: error: cannot run %s (%s)\n", SNAPBOX_PYTHON, strerror(errno));
    exit(1);
}

/* --- the root, as the command line would choose it ------------------------------------ */

/* Global options that take a value, as the command line defines them. */
static int takes_value(const char *opt)
{
    static const char *const with_value[] = {"--root", "--debug-log", "--log", "--log-format", "--network",
                                             "--rootless", "--criu", NULL};
    for (int i = 0; with_value[i] != NULL; i++)
        if (strcmp(opt, with_value[i]) == 0)
            return 1;
    return 0;
}

/* The --root of the command line, or the default root; NULL when the command is not one
 * to hand over (no command, `warm`, or an option this parser does not know). */
static const char *command_root(int argc, char **argv, char *buf, size_t size)
{
    const char *root = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *arg = argv[i], *eq = strchr(arg, '=');
        if (eq != NULL && strncmp(arg, "--", 2) == 0) {
            char name[32];
            snprintf(name, sizeof(name), "%.*s", (int)(eq - arg), arg);
            if (!takes_value(name))
                return NULL;
            if (strcmp(name, "--root") == 0)
                root = eq + 1;
        } else if (takes_value(arg)) {
            if (++i >= argc)
                return NULL;
            if (strcmp(arg, "--root") == 0)
                root = argv[i];
        } else if (strcmp(arg, "--debug") != 0 && strcmp(arg, "--strace") != 0) {
            return NULL; /* --help, --version, or a mistake: the Python CLI says what */
        }
    }
    if (i >= argc || strcmp(argv[i], "warm") == 0)
        return NULL;
    if (root == NULL) {
        if (geteuid() == 0) {
            root = "/var/run/snapbox";
        } else {
            const char *xdg = getenv("XDG_RUNTIME_DIR");
            if (xdg != NULL && xdg[0] != '\0')
                snprintf(buf, size, "%s/snapbox", xdg);
            else
                snprintf(buf, size, "/tmp/snapbox-%u/snapbox", (unsigned)geteuid());
            root = buf;
        }
    }
    return root;
}

/* --- CBOR, as much as the messages need ----------------------------------------------- */

struct buf {
    uint8_t *data;
    size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (b->data == NULL) {
            fputs("snapbox: error: out of memory\n", stderr);
            exit(1);
        }
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_head(struct buf *b, int major, uint64_t n)
{
    uint8_t h[9];
    size_t len;
    h[0] = (uint8_t)(major << 5);
    if (n < 24) {
        h[0] |= (uint8_t)n;
        len = 1;
    } else if (n <= 0xff) {
        h[0] |= 24;
        h[1] = (uint8_t)n;
        len = 2;
    } else if (n <= 0xffff) {
        h[0] |= 25;
        h[1] = (uint8_t)(n >> 8);
        h[2] = (uint8_t)n;
        len = 3;
    } else if (n <= 0xffffffffu) {
        h[0] |= 26;
        for (int i = 0; i < 4; i++)
            h[1 + i] = (uint8_t)(n >> (24 - 8 * i));
        len = 5;
    } else {
        h[0] |= 27;
        for (int i = 0; i < 8; i++)
            h[1 + i] = (uint8_t)(n >> (56 - 8 * i));
        len = 9;
    }
    put(b, h, len);
}

static void put_text(struct buf *b, const char *s)
{
    size_t n = strlen(s);
    put_head(b, 3, n);
    put(b, s, n);
}

/* Arguments, paths and the environment are bytes, not necessarily UTF-8. */
static void put_bytes(struct buf *b, const char *s)
{
    size_t n = strlen(s);
    put_head(b, 2, n);
    put(b, s, n);
}

/* A reply holds only small maps of text keys to integers, booleans, null and text. */
struct reply {
    int has_ok, ok, has_pid, has_exit;
    int64_t pid, exit_code;
    char error[512];
};

static int get_uint(const uint8_t **p, const uint8_t *end, int info, uint64_t *out)
{
    int n = info < 24 ? 0 : info == 24 ? 1 : info == 25 ? 2 : info == 26 ? 4 : info == 27 ? 8 : -1;
    if (n < 0 || *p + n > end)
        return -1;
    if (n == 0) {
        *out = (uint64_t)info;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | (*p)[i];
    *p += n;
    *out = v;
    return 0;
}

static int parse_reply(const uint8_t *p, size_t len, struct reply *r)
{
    const uint8_t *end = p + len;
    uint64_t pairs;
    memset(r, 0, sizeof(*r));
    if (p >= end || (*p >> 5) != 5)
        return -1;
    int head = *p++ & 31;
    if (get_uint(&p, end, head, &pairs) < 0)
        return -1;
    for (uint64_t k = 0; k < pairs; k++) {
        uint64_t n;
        char key[16];
        if (p >= end || (*p >> 5) != 3)
            return -1;
        int info = *p++ & 31;
        if (get_uint(&p, end, info, &n) < 0 || n >= sizeof(key) || p + n > end)
            return -1;
        memcpy(key, p, n);
        key[n] = '\0';
        p += n;
        if (p >= end)
            return -1;
        int major = *p >> 5;
        info = *p++ & 31;
        int64_t value = 0;
        if (major == 0 || major == 1) {
            if (get_uint(&p, end, info, &n) < 0)
                return -1;
            value = major == 0 ? (int64_t)n : -1 - (int64_t)n;
        } else if (major == 7 && (info == 20 || info == 21 || info == 22)) {
            value = info == 21;
        } else if (major == 3) {
            if (get_uint(&p, end, info, &n) < 0 || p + n > end)
                return -1;
            if (strcmp(key, "error") == 0)
                snprintf(r->error, sizeof(r->error), "%.*s", (int)n, (const char *)p);
            p += n;
            continue;
        } else {
            return -1;
        }
        if (strcmp(key, "ok") == 0) {
            r->has_ok = 1;
            r->ok = (int)value;
        } else if (strcmp(key, "pid") == 0) {
            r->has_pid = 1;
            r->pid = value;
        } else if (strcmp(key, "exit") == 0) {
            r->has_exit = 1;
            r->exit_code = value;
        }
    }
    return 0;
}

/* --- the conversation with the pool --------------------------------------------------- */

static int read_full(int fd, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, (char *)p + got, n - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    return 0;
}

/* 0 and the reply, or -1 if the connection ended first. */
static int read_reply(int fd, struct reply *r)
{
    uint8_t head[4], body[4096];
    if (read_full(fd, head, 4) < 0)
        return -1;
    uint32_t n = (uint32_t)head[0] | (uint32_t)head[1] << 8 | (uint32_t)head[2] << 16 | (uint32_t)head[3] << 24;
    if (n > sizeof(body) || read_full(fd, body, n) < 0 || parse_reply(body, n, r) < 0)
        return -1;
    return 0;
}

static void pass_on(int sig)
{
    last_signal = sig;
    if (worker_pid > 0)
        kill((pid_t)worker_pid, sig);
    else
        pending[sig] = 1;
}

/* The signals `run` and `exec` pass on to the sandbox. */
static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH, 0};

static int connect_pool(const char *root)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if ((size_t)snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/.warm.sock", root) >= sizeof(addr.sun_path))
        return -1; /* a path this long: the Python CLI reaches it through /proc/self/fd */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_request(int fd, int argc, char **argv)
{
    struct buf b = {0};
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return -1;
    mode_t mask = umask(022);
    umask(mask);
    size_t nenv = 0;
    while (environ[nenv] != NULL)
        nenv++;

    put(&b, "\0\0\0\0", 4);
    put_head(&b, 5, 5);
    put_text(&b, "op");
    put_text(&b, "cli");
    put_text(&b, "argv");
    put_head(&b, 4, (uint64_t)argc - 1);
    for (int i = 1; i < argc; i++)
        put_bytes(&b, argv[i]);
    put_text(&b, "cwd");
    put_bytes(&b, cwd);
    put_text(&b, "umask");
    put_head(&b, 0, mask);
    put_text(&b, "env");
    put_head(&b, 4, nenv);
    for (size_t i = 0; i < nenv; i++)
        put_bytes(&b, environ[i]);
    uint32_t n = (uint32_t)(b.len - 4);
    for (int i = 0; i < 4; i++)
        b.data[i] = (uint8_t)(n >> (8 * i));

    int fds[3] = {0, 1, 2};
    char control[CMSG_SPACE(sizeof(fds))] = {0};
    struct iovec iov = {.iov_base = b.data, .iov_len = b.len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(c), fds, sizeof(fds));
    ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
    size_t off = sent > 0 ? (size_t)sent : 0;
    while (sent >= 0 && off < b.len) {
        sent = send(fd, b.data + off, b.len - off, MSG_NOSIGNAL);
        if (sent > 0)
            off += (size_t)sent;
    }
    free(b.data);
    return off == b.len ? 0 : -1;
}

/* A command with --pid-file (create, run, exec as containerd's shim runs them): its caller
   waits for that pid, so the process must be the caller's descendant, never the pool's. */
static int wants_pid_file(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--pid-file") == 0 || strncmp(argv[i], "--pid-file=", 11) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    char buf[4096];
    const char *warm = getenv("SNAPBOX_WARM");
    const char *root = command_root(argc, argv, buf, sizeof(buf));
    if (root == NULL || (warm != NULL && strcmp(warm, "0") == 0) || wants_pid_file(argc, argv))
        exec_python(argc, argv);
    int fd = connect_pool(root);
    if (fd < 0)
        exec_python(argc, argv);

    struct sigaction sa = {.sa_handler = pass_on, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    for (int i = 0; forwarded[i] != 0; i++)
        sigaction(forwarded[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct reply r;
    if (send_request(fd, argc, argv) < 0 || read_reply(fd, &r) < 0) {
        /* The pool went away before a worker took the command: nothing has run. */
        close(fd);
        exec_python(argc, argv);
    }
    if (!r.ok || !r.has_pid) {
        fprintf(stderr, "snapbox: error: %s\n", r.error[0] ? r.error : "the warm pool refused the command");
        return 1;
    }
    worker_pid = (sig_atomic_t)r.pid;
    for (int sig = 1; sig < 65; sig++)
        if (pending[sig])
            kill((pid_t)r.pid, sig);
    if (read_reply(fd, &r) < 0 || !r.has_exit) {
        if (last_signal != 0 && last_signal != SIGWINCH) {
            /* The worker died of the signal passed on to it: so does this process. */
            signal(last_signal, SIG_DFL);
            raise(last_signal);
        }
        fprintf(stderr, "snapbox: error: the warm pool's worker for this command died (see %s/.warm.log)\n", root);
        return 1;
    }
    return (int)(r.exit_code & 0xff);
}
