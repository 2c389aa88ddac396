/* rawtrack - `rawtrack backup`: declarations shared by its files.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   cmd-backup.c       the subcommands: options, help, list
 *   backup-repo.c      the repository: manifests, names, commit, recovery
 *   backup-source.c    what a backup reads: an image or an NBD export
 *   backup-create.c    the copy pipeline and the checkpoint rotation
 *   backup-restore.c   the chain map and restore
 *   backup-verify.c    verify and prune
 */
#ifndef RAWTRACK_BACKUP_H
#define RAWTRACK_BACKUP_H

#include <stdint.h>
#include <stdbool.h>
#include <stddef.h>

#include "cli.h"

/* Exit codes of `rawtrack backup` (documented in --help). */
#define BK_EXIT_OK       0
#define BK_EXIT_ERROR    1   /* bad usage, bad input, nothing done */
#define BK_EXIT_SOURCE   2   /* reading the source failed */
#define BK_EXIT_REPO     3   /* writing or reading the repository failed */
#define BK_EXIT_VERIFY   4   /* verify found damage */

#define BK_CLUSTER 65536u    /* cluster size of every backup file */
#define BK_HASH_LEN 16       /* XXH3-128 */
#define BK_MAX_EXTENT (64u << 20)   /* an extent's hash covers at most this */

struct bk_extent {
  uint64_t off, len;
  uint8_t hash[BK_HASH_LEN];
};

struct bk_range {
  uint64_t off, len;
};

struct bk_manifest {
  char *id;                    /* "000003-20261203T151422Z" */
  uint64_t seq;
  char *file;                  /* "<id>.qcow2" */
  char *parent;                /* id, or NULL for a full backup */
  char *time;                  /* ISO 8601 UTC */
  int64_t unix_time;
  uint64_t vsize;
  uint32_t cluster_size;
  char *source_kind;           /* "image" or "nbd" */
  char *source;                /* identity: image realpath, or the URI */
  char *checkpoint;            /* bitmap created (image) or read (nbd), or NULL */
  char *repo;                  /* repository uuid */
  char *compression;           /* "none" or "zstd" */
  uint64_t data_bytes, zero_bytes, file_bytes, read_bytes;
  double seconds;
  struct bk_extent *ext;
  size_t n_ext;
  struct bk_range *zero;
  size_t n_zero;
  uint8_t checksum[BK_HASH_LEN];
  char *folded;                /* prune: "A..B" folded into this one, or NULL */
};

struct bk_repo {
  char *dir;
  int dirfd;
  char *uuid;
  struct bk_manifest **b;      /* sorted by seq */
  size_t n;
};

/* ---- backup-repo.c ------------------------------------------------------ */
/* Open REPO (create with create=true); lock=true takes the repository's
 * exclusive lock (one writer at a time) and finishes or undoes whatever an
 * interrupted create or prune left (recovery).  Prints errors; NULL on
 * failure. */
struct bk_repo *bk_repo_open (const char *dir, bool create, bool lock);
void bk_repo_close (struct bk_repo *r);
/* Backup by id (or the latest for NULL/""), or NULL. */
struct bk_manifest *bk_repo_find (struct bk_repo *r, const char *id);
/* The chain of b, oldest (the full) first; NULL with a message if a link
 * is missing.  *n gets its length. */
struct bk_manifest **bk_repo_chain (struct bk_repo *r, struct bk_manifest *b,
                                    size_t *n);
/* REPO/name, allocated. */
char *bk_path (struct bk_repo *r, const char *name);
/* Write the manifest as <id>.json durably (partial, fsync, rename, fsync
 * of the directory).  -1 with a message printed. */
int bk_manifest_commit (struct bk_repo *r, const struct bk_manifest *m,
                        const char *name);
int bk_manifest_write (const struct bk_manifest *m, const char *path);
struct bk_manifest *bk_manifest_load (const char *path, char *err,
                                      size_t errlen);
void bk_manifest_free (struct bk_manifest *m);
int bk_fsync_dir (struct bk_repo *r);
/* Hex of a hash (33 bytes with the NUL). */
void bk_hex (const uint8_t *h, char *out);
/* Checkpoint bitmap name for sequence seq; parse one back (-1 if it is
 * not one of this repository's). */
char *bk_checkpoint_name (struct bk_repo *r, uint64_t seq);
int bk_checkpoint_seq (struct bk_repo *r, const char *name, uint64_t *seq);
/* Hash helpers (XXH3-128, canonical big-endian bytes). */
void bk_hash (const void *p, size_t n, uint8_t *out);
/* Building a manifest's extents cluster by cluster, in offset order: an
 * extent's hash is XXH3-128 over its clusters' hashes; a gap or
 * BK_MAX_EXTENT starts a new one.  st: an XXH3_state_t the caller makes
 * and frees; bk_ext_close ends the open extent (before a gap, and at the
 * end). */
struct bk_ext_builder {
  struct bk_manifest *m;
  size_t cap;
  void *st;                    /* XXH3_state_t * */
  bool open;
};
void bk_ext_add (struct bk_ext_builder *b, uint64_t off, uint64_t len,
                 const uint8_t *hash);
void bk_ext_close (struct bk_ext_builder *b);
/* Whole-backup checksum from the extents. */
void bk_checksum (const struct bk_manifest *m, uint8_t *out);
/* Test hook: RAWTRACK_BACKUP_FAIL_AT=NAME makes the step NAME fail (exit
 * with an I/O error) or, with RAWTRACK_BACKUP_KILL_AT=NAME, kill -9 the
 * process there; RAWTRACK_BACKUP_STOP_AT=NAME stops it there (SIGSTOP)
 * until the test continues it.  Steps are named in backup-create.c,
 * backup-live.c and backup-verify.c. */
void bk_step (const char *name);
int bk_step_fail (const char *name);

/* ---- backup-source.c ---------------------------------------------------- */
struct bk_source;
/* SOURCE: an NBD URI (nbd://, nbd+unix://, nbds://...) or an image path.
 * image_rw: open an image read-write (checkpoints).  connections: NBD
 * connections (>= 1).  bitmap: NBD dirty bitmap to request, or NULL. */
struct bk_source *bk_source_open (const char *spec, bool image_rw,
                                  int connections, const char *bitmap);
void bk_source_close (struct bk_source *s);
bool bk_source_is_image (struct bk_source *s);
struct rawtrack_image *bk_source_image (struct bk_source *s);
uint64_t bk_source_size (struct bk_source *s);
const char *bk_source_identity (struct bk_source *s);
/* Threads that may read at once (one request in flight each). */
int bk_source_parallel (struct bk_source *s);
/* Read (thread t of bk_source_parallel). -1 with a message printed. */
int bk_source_pread (struct bk_source *s, int t, void *buf, uint64_t count,
                     uint64_t off);
/* Allocation: the length of the run at off (at most count) and whether it
 * reads as zeros.  -1 on error (message printed). */
int64_t bk_source_status (struct bk_source *s, uint64_t off, uint64_t count,
                          bool *zero);
/* NBD: the dirty extents of the --bitmap, appended to *v (sorted). */
int bk_source_dirty (struct bk_source *s, struct bk_range **v, size_t *n);
/* An NBD export with the contexts qemu:dirty-bitmap:NAME of every name in
 * bitmaps (NULL-terminated; NULL: none) - a point-in-time export of a
 * live backup - and the dirty extents of one of them. */
struct bk_source *bk_source_open_nbd (const char *uri, int connections,
                                      const char *const *bitmaps);
int bk_source_dirty_bitmap (struct bk_source *s, const char *bitmap,
                            struct bk_range **v, size_t *n);

/* ---- backup-create.c ---------------------------------------------------- */
struct bk_create_opts {
  bool full, json, compress;
  int connections;
  const char *bitmap;
  const char *control;         /* --control PATH: live through that server */
  bool offline;                /* --offline: never through a server */
};
/* The checkpoint bitmaps of one repository on an image. */
struct bk_ckpt {
  char *name;
  uint64_t seq;
  uint32_t flags;              /* RAWTRACK_BITMAP_AUTO, _IN_USE */
};
struct bk_ckpts {
  struct bk_ckpt *v;
  size_t n;
};
void bk_ckpts_add (struct bk_ckpts *c, const char *name, uint64_t seq,
                   uint32_t flags);
void bk_ckpts_free (struct bk_ckpts *c);
int bk_create (const char *source, const char *repo,
               const struct bk_create_opts *o);
/* Progress line on a terminal (stderr): done of total bytes. */
struct bk_progress;
struct bk_progress *bk_progress_new (const char *what, uint64_t total);
void bk_progress_update (struct bk_progress *p, uint64_t done);
/* Erase the bar (before printing a line); the next update redraws it. */
void bk_progress_clear (struct bk_progress *p);
void bk_progress_end (struct bk_progress *p);
double bk_now (void);

/* ---- backup-live.c ------------------------------------------------------ */
/* A live backup through the `rawtrack serve` holding an image. */
struct bk_live;
/* The server holding image: the one at control (--control), or the one
 * the registry names.  1 with *out set; 0 when no server holds it (back
 * up offline); -1 on error (printed). */
int bk_live_open (const char *image, const char *control,
                  struct bk_live **out);
void bk_live_close (struct bk_live *l);
const char *bk_live_control (struct bk_live *l);
/* The export of image (confirmed by dev/ino), its size, and the
 * checkpoint bitmaps of repository r on it (appended to *ck).  -1 on
 * error (printed). */
int bk_live_export (struct bk_live *l, const char *image, struct bk_repo *r,
                    char **export_name, uint64_t *size, struct bk_ckpts *ck);
/* End with failure every view of one of r's checkpoints (left by a run
 * that was killed; the caller holds r's lock): how many, or -1 on error
 * (printed). */
int bk_live_end_stale (struct bk_live *l, struct bk_repo *r,
                       const char *export_name);
/* The checkpoint of a stale view ended by this run whose frozen bitmaps
 * included bitmap (merged into it), or NULL. */
const char *bk_live_stale_successor (struct bk_live *l, const char *bitmap);
/* checkpoint NAME of export, freezing freeze (NULL-terminated), then
 * backup-begin: *uri and *size of its point-in-time export.  -1 on error
 * (printed); *started says whether the view may exist (to be ended). */
int bk_live_checkpoint (struct bk_live *l, const char *name,
                        const char *export_name, const char *const *freeze,
                        bool full, bool *started, char **uri,
                        uint64_t *size);
/* The bytes the view of checkpoint holds (copy-before-write), or -1. */
int64_t bk_live_cbw_bytes (struct bk_live *l, const char *checkpoint);
/* backup-end.  -1 on error (printed). */
int bk_live_end (struct bk_live *l, const char *checkpoint, bool success);

/* ---- backup-restore.c --------------------------------------------------- */
/* One layer of an opened chain. */
struct bk_chain {
  struct bk_manifest **m;      /* oldest first */
  struct rawtrack_image **img;
  size_t n;
  uint64_t vsize;              /* the top's */
};
int bk_chain_open (struct bk_repo *r, struct bk_manifest *top,
                   struct bk_chain *c);
void bk_chain_close (struct bk_chain *c);
/* Call fn for [off, off+len) in runs: layer (index into c, or -1 when no
 * layer holds it: zeros) and whether the holder stores zeros. */
typedef int (*bk_map_fn) (void *opaque, uint64_t off, uint64_t len,
                          int layer, bool zero);
int bk_chain_map (struct bk_chain *c, uint64_t off, uint64_t len,
                  bk_map_fn fn, void *opaque);
/* Add to *v the runs of [0, min(size, the chain's size)) where status
 * (the disk now) says zeros but the chain holds data: zeros written where
 * no bitmap saw them (a disk shrunk and grown back, a hole punched
 * behind rawtrack's back).  status returns the run length at off (at most
 * count) and whether it reads as zeros, or -1 with a message printed. */
typedef int64_t (*bk_status_fn) (void *opaque, uint64_t off, uint64_t count,
                                 bool *zero);
int bk_chain_stale_zeros (struct bk_chain *c, uint64_t size,
                          bk_status_fn status, void *opaque,
                          struct bk_range **v, size_t *n);
int bk_restore (const char *spec, const char *target, bool force, bool json);

/* ---- backup-verify.c ---------------------------------------------------- */
int bk_verify (const char *repo, const char *source, const char *bitmap,
               bool json);
int bk_prune (const char *repo, uint64_t keep, bool json);

/* Growable range list helper. */
void bk_ranges_add (struct bk_range **v, size_t *n, uint64_t off,
                    uint64_t len);
/* Sort ranges by offset (backup-repo.c). */
void bk_ranges_sort (struct bk_range *v, size_t n);
/* Add to *v the dirty extents in [0, size) of every checkpoint bitmap of
 * img that belongs to r from backup L on: what changed since L.  *have_l
 * (when not NULL) is set to true when L's own checkpoint is among them
 * (and left alone otherwise).  -1 with a message printed (backup-repo.c). */
int bk_checkpoint_changes (struct bk_repo *r, const struct bk_manifest *L,
                           struct rawtrack_image *img, uint64_t size,
                           struct bk_range **v, size_t *n, bool *have_l);

#endif /* RAWTRACK_BACKUP_H */
