/*
 * axl_config: AXL_Config set and read back, as filo's Filo_Config and SCR
 * use it. KVTree is the caller's library; this program carries a minimal
 * stand-in with KVTree's names and signatures (the functions libaxl looks
 * up with dlsym), exported with -rdynamic. Used by tests/axl_api.rs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "axl.h"

#define KVTREE_SUCCESS 0
#define KVTREE_FAILURE 1

struct kvtree_elem_struct {
    char* key;
    unsigned long value;
    struct kvtree_elem_struct* next;
};
typedef struct kvtree_elem_struct kvtree_elem;
struct kvtree_struct {
    kvtree_elem* first;
};

kvtree* kvtree_new(void) { return calloc(1, sizeof(kvtree)); }

static kvtree_elem* find(const kvtree* t, const char* key) {
    for (kvtree_elem* e = t->first; e; e = e->next) {
        if (strcmp(e->key, key) == 0) return e;
    }
    return NULL;
}

int kvtree_util_set_bytecount(kvtree* t, const char* key, unsigned long v) {
    kvtree_elem* e = find(t, key);
    if (!e) {
        e = calloc(1, sizeof(*e));
        e->key = strdup(key);
        e->next = t->first;
        t->first = e;
    }
    e->value = v;
    return KVTREE_SUCCESS;
}
int kvtree_util_set_int(kvtree* t, const char* key, int v) {
    return kvtree_util_set_bytecount(t, key, (unsigned long)v);
}
int kvtree_util_get_bytecount(const kvtree* t, const char* key, unsigned long* v) {
    kvtree_elem* e = find(t, key);
    if (!e) return KVTREE_FAILURE;
    *v = e->value;
    return KVTREE_SUCCESS;
}
int kvtree_util_get_int(const kvtree* t, const char* key, int* v) {
    unsigned long u;
    if (kvtree_util_get_bytecount(t, key, &u) != KVTREE_SUCCESS) return KVTREE_FAILURE;
    *v = (int)u;
    return KVTREE_SUCCESS;
}
kvtree_elem* kvtree_elem_first(const kvtree* t) { return t ? t->first : NULL; }
kvtree_elem* kvtree_elem_next(const kvtree_elem* e) { return e ? e->next : NULL; }
char* kvtree_elem_key(const kvtree_elem* e) { return e ? e->key : NULL; }

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "axl_config: check failed at line %d: %s\n",  \
                    __LINE__, #cond);                                      \
            return 1;                                                      \
        }                                                                  \
    } while (0)

static int get(const kvtree* t, const char* key) {
    int v = -1;
    kvtree_util_get_int(t, key, &v);
    return v;
}

int main(int argc, char** argv) {
    CHECK(argc == 2);
    char missing[4096], src[4096];
    snprintf(missing, sizeof missing, "%s/missing/dir/a.txt", argv[1]);
    snprintf(src, sizeof src, "%s/a.txt", argv[1]);
    FILE* f = fopen(src, "w");
    CHECK(f != NULL);
    fputs("a\n", f);
    fclose(f);

    CHECK(AXL_Init() == AXL_SUCCESS);
    kvtree* now = AXL_Config(NULL);
    CHECK(now != NULL);
    CHECK(get(now, AXL_KEY_CONFIG_MKDIR) == 1);
    CHECK(get(now, AXL_KEY_CONFIG_COPY_METADATA) == 0);
    CHECK(get(now, AXL_KEY_CONFIG_DEBUG) == 0);
    CHECK(get(now, AXL_KEY_CONFIG_RANK) == 0);
    unsigned long buf = 0;
    CHECK(kvtree_util_get_bytecount(now, AXL_KEY_CONFIG_FILE_BUF_SIZE, &buf) == KVTREE_SUCCESS);
    CHECK(buf == 32UL * 1024 * 1024);

    kvtree* set = kvtree_new();
    kvtree_util_set_int(set, AXL_KEY_CONFIG_MKDIR, 0);
    kvtree_util_set_int(set, AXL_KEY_CONFIG_COPY_METADATA, 1);
    kvtree_util_set_int(set, AXL_KEY_CONFIG_RANK, 3);
    CHECK(AXL_Config(set) == set);

    kvtree* after = AXL_Config(NULL);
    CHECK(after != NULL);
    CHECK(get(after, AXL_KEY_CONFIG_MKDIR) == 0);
    CHECK(get(after, AXL_KEY_CONFIG_COPY_METADATA) == 1);
    CHECK(get(after, AXL_KEY_CONFIG_RANK) == 3);

    /* The setting applies: with MKDIR 0 a missing directory is refused. */
    int id = AXL_Create(AXL_XFER_SYNC, "config", NULL);
    CHECK(id >= 0);
    CHECK(AXL_Add(id, src, missing) == -1);
    CHECK(AXL_Free(id) == AXL_SUCCESS);

    /* An unknown key fails, as in AXL. */
    kvtree* bogus = kvtree_new();
    kvtree_util_set_int(bogus, "BOGUS", 1);
    CHECK(AXL_Config(bogus) == NULL);

    CHECK(AXL_Finalize() == AXL_SUCCESS);
    printf("axl_config: all checks held\n");
    return 0;
}
