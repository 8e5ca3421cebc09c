/* TCP over 127.0.0.1, for the network rows of bench/run.
 *
 *   pingpong loop N        a forked client and server in one sandbox: N round trips of one
 *                          byte; prints the mean microseconds per round trip
 *   pingpong bulk MB       the same pair: the client sends MB megabytes in 64 KiB writes and
 *                          waits for the server's one-byte receipt; prints MB/s
 *   pingpong serve PORT [ADDR]   a server for clients from outside, on ADDR (127.0.0.1): each
 *                          connection says 'p' (echo every byte until EOF) or 'b' (read
 *                          until EOF, then a receipt); it waits in poll(2) before each
 *                          read, as event-driven servers do (runsc's host network, on
 *                          this kernel, returns EOF from a blocking read that finds no data)
 *   pingpong client PORT N [ADDR] / pingpong send PORT MB [ADDR]   the clients of `serve`
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536

static void die(const char *what) {
    perror(what);
    exit(1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int tcp_socket(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (s < 0) die("socket");
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    return s;
}

static const char *address = "127.0.0.1";

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, address, &a.sin_addr) != 1) die("address");
    return a;
}

static int listener(int port, int *bound) {
    int s = tcp_socket();
    struct sockaddr_in a = loopback(port);
    socklen_t len = sizeof a;
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(s, 16) < 0) die("listen");
    getsockname(s, (struct sockaddr *)&a, &len);
    *bound = ntohs(a.sin_port);
    return s;
}

static int dial(int port) {
    int s = tcp_socket();
    struct sockaddr_in a = loopback(port);
    for (int i = 0; connect(s, (struct sockaddr *)&a, sizeof a) < 0; i++) {
        if (i == 500) die("connect");
        usleep(10000);
    }
    return s;
}

static void exact(int fd, char *buf, size_t n) {
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) die("read");
        got += r;
    }
}

static void write_all(int fd, const char *buf, size_t n) {
    for (size_t put = 0; put < n;) {
        ssize_t w = write(fd, buf + put, n - put);
        if (w <= 0) die("write");
        put += w;
    }
}

/* The client side of both measurements, on a connected socket. */
static double pings(int s, long n) {
    char c = 'x';
    double t0 = now();
    for (long i = 0; i < n; i++) {
        write_all(s, &c, 1);
        exact(s, &c, 1);
    }
    return (now() - t0) / n * 1e6;
}

static double sends(int s, long mb) {
    static char buf[CHUNK];
    memset(buf, 'b', sizeof buf);
    double t0 = now();
    for (long i = 0; i < mb * (1 << 20) / CHUNK; i++) write_all(s, buf, CHUNK);
    shutdown(s, SHUT_WR);
    exact(s, buf, 1);
    return mb / (now() - t0);
}

static int polled;  /* serve: wait in poll(2) before each read */

static ssize_t serve_read(int fd, char *buf, size_t n) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (polled && poll(&p, 1, -1) < 0) die("poll");
    return read(fd, buf, n);
}

/* The server side: 'p' echoes, 'b' reads to EOF and sends a receipt. */
static void serve_one(int c) {
    static char buf[CHUNK];
    char mode;
    if (serve_read(c, &mode, 1) != 1) die("read");
    if (mode == 'p') {
        char b;
        while (serve_read(c, &b, 1) == 1) write_all(c, &b, 1);
    } else {
        while (serve_read(c, buf, sizeof buf) > 0) {
        }
        write_all(c, "k", 1);
    }
    close(c);
}

static void pair(char mode, long amount) {
    int port, l = listener(0, &port);
    pid_t child = fork();
    if (child == 0) {
        int s = dial(port);
        write_all(s, &mode, 1);
        printf("%.2f\n", mode == 'p' ? pings(s, amount) : sends(s, amount));
        fflush(stdout);
        _exit(0);
    }
    int c = accept(l, NULL, NULL);
    if (c < 0) die("accept");
    serve_one(c);
    waitpid(child, NULL, 0);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: pingpong loop N | bulk MB | serve PORT | client PORT N | send PORT MB\n");
        return 2;
    }
    if (!strcmp(argv[1], "loop")) pair('p', atol(argv[2]));
    else if (!strcmp(argv[1], "bulk")) pair('b', atol(argv[2]));
    else if (!strcmp(argv[1], "serve")) {
        if (argc > 3) address = argv[3];
        int port, l = listener(atoi(argv[2]), &port);
        polled = 1;
        printf("listening %d\n", port);
        fflush(stdout);
        for (;;) {
            int c = accept(l, NULL, NULL);
            if (c < 0) die("accept");
            serve_one(c);
        }
    } else if (argc > 3 && (!strcmp(argv[1], "client") || !strcmp(argv[1], "send"))) {
        char mode = argv[1][0] == 'c' ? 'p' : 'b';
        if (argc > 4) address = argv[4];
        int s = dial(atoi(argv[2]));
        write_all(s, &mode, 1);
        printf("%.2f\n", mode == 'p' ? pings(s, atol(argv[3])) : sends(s, atol(argv[3])));
    } else {
        fprintf(stderr, "pingpong: unknown mode %s\n", argv[1]);
        return 2;
    }
    return 0;
}
