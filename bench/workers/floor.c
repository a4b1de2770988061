/*
** The floor: the same status reads as dh3 makes, on libcurl alone, with no JSON and no Lua.
** Built by bench/run.lua with `cc $(pkg-config --cflags --libs libcurl)`.
**
**   floor seq   BASE_URL N         N sequential GETs, one easy handle reused (keep-alive)
**   floor multi BASE_URL N CONC    N GETs over one multi handle, CONC in flight at any time
**
** Each GET is BASE_URL/api/v1/task/get?task_id=bench-<i> with the headers dh3 sends; the body is
** appended to a buffer (the way dh3's core keeps an API answer) and only the HTTP status is
** checked. Prints one line: "wall=<s> cpu=<s> n=<N>", wall from CLOCK_MONOTONIC, cpu from
** getrusage (user + system).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <curl/curl.h>

typedef struct {
  char *data;
  size_t len, cap;
} buffer;

typedef struct {
  CURL *easy;
  buffer body;
  char url[512];
} slot;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
  buffer *b = ud;
  size_t n = size * nmemb;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    char *p;
    while (cap < b->len + n) cap *= 2;
    p = realloc(b->data, cap);
    if (!p) return 0;
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, ptr, n);
  b->len += n;
  return n;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6
       + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static struct curl_slist *headers(void) {
  struct curl_slist *h = NULL;
  h = curl_slist_append(h, "Authorization: Bearer bench-key");
  h = curl_slist_append(h, "Content-Type: application/json");
  h = curl_slist_append(h, "Accept: application/json");
  return h;
}

static void setup(slot *s, struct curl_slist *h) {
  s->easy = curl_easy_init();
  curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, &s->body);
  curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
  curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
}

static void aim(slot *s, const char *base, long i) {
  snprintf(s->url, sizeof s->url, "%s/api/v1/task/get?task_id=bench-%ld", base, i);
  curl_easy_setopt(s->easy, CURLOPT_URL, s->url);
  s->body.len = 0;
}

static int check(slot *s, CURLcode rc) {
  long status = 0;
  if (rc != CURLE_OK) {
    fprintf(stderr, "floor: %s\n", curl_easy_strerror(rc));
    return 0;
  }
  curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200 || s->body.len == 0) {
    fprintf(stderr, "floor: HTTP %ld, %zu bytes\n", status, s->body.len);
    return 0;
  }
  return 1;
}

static int run_seq(const char *base, long n) {
  struct curl_slist *h = headers();
  slot s;
  long i;
  memset(&s, 0, sizeof s);
  setup(&s, h);
  for (i = 0; i < n; i++) {
    aim(&s, base, 1); /* one task read again and again, as dh3 does */
    if (!check(&s, curl_easy_perform(s.easy))) return 1;
  }
  curl_easy_cleanup(s.easy);
  curl_slist_free_all(h);
  free(s.body.data);
  return 0;
}

static int run_multi(const char *base, long n, long conc) {
  struct curl_slist *h = headers();
  CURLM *multi = curl_multi_init();
  slot *slots = calloc((size_t)conc, sizeof *slots);
  long started = 0, done = 0, k;
  int running = 0, failed = 0;
  if (!slots) return 1;
  for (k = 0; k < conc && started < n; k++) {
    setup(&slots[k], h);
    aim(&slots[k], base, started++);
    curl_multi_add_handle(multi, slots[k].easy);
  }
  while (done < n && !failed) {
    CURLMsg *msg;
    int left;
    curl_multi_perform(multi, &running);
    while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
      slot *s;
      if (msg->msg != CURLMSG_DONE) continue;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
      if (!check(s, msg->data.result)) failed = 1;
      done++;
      curl_multi_remove_handle(multi, s->easy);
      if (started < n) {
        aim(s, base, started++);
        curl_multi_add_handle(multi, s->easy);
      }
    }
    if (done < n) curl_multi_poll(multi, NULL, 0, 1000, NULL);
  }
  for (k = 0; k < conc; k++) {
    if (slots[k].easy) {
      curl_multi_remove_handle(multi, slots[k].easy);
      curl_easy_cleanup(slots[k].easy);
    }
    free(slots[k].body.data);
  }
  free(slots);
  curl_multi_cleanup(multi);
  curl_slist_free_all(h);
  return failed;
}

int main(int argc, char **argv) {
  double t0, c0;
  long n;
  int rc;
  if (argc < 4) {
    fprintf(stderr, "usage: floor seq BASE_URL N | floor multi BASE_URL N CONC\n");
    return 2;
  }
  n = atol(argv[3]);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  t0 = now();
  c0 = cpu();
  if (strcmp(argv[1], "seq") == 0) {
    rc = run_seq(argv[2], n);
  } else if (strcmp(argv[1], "multi") == 0 && argc >= 5) {
    rc = run_multi(argv[2], n, atol(argv[4]));
  } else {
    fprintf(stderr, "floor: unknown mode %s\n", argv[1]);
    return 2;
  }
  if (rc == 0) printf("wall=%.6f cpu=%.6f n=%ld\n", now() - t0, cpu() - c0, n);
  curl_global_cleanup();
  return rc;
}
