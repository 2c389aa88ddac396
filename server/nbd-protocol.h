/* rawtrack - NBD wire protocol: constants and sizes.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Every value here comes from the NBD protocol (doc/proto.md in
 * NetworkBlockDevice/nbd, with the extended-headers extension) and the
 * qemu namespace (qemu docs/interop/nbd.rst); see
 * /work/shared/docs/nbd-facts.md for where each one was checked.
 *
 * Everything on the wire is big-endian.  Structures are never sent in
 * place: the handshake and transmission code packs and unpacks each field
 * at its offset with common/byteorder.h, so the layouts below are
 * documentation plus offset constants (NBD_*_OFF_*).
 */
#ifndef RAWTRACK_NBD_PROTOCOL_H
#define RAWTRACK_NBD_PROTOCOL_H

#include <stdint.h>

/* ---- handshake ---------------------------------------------------------- */
#define NBD_INIT_MAGIC          UINT64_C (0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC          UINT64_C (0x49484156454F5054) /* "IHAVEOPT" */
#define NBD_REP_MAGIC           UINT64_C (0x0003e889045565a9)

/* Greeting: init magic (8), opts magic (8), handshake flags (2). */
#define NBD_GREETING_SIZE       18

/* Handshake flags (server) and client flags. */
#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES      (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE NBD_FLAG_FIXED_NEWSTYLE
#define NBD_FLAG_C_NO_ZEROES    NBD_FLAG_NO_ZEROES

/* Option request: magic (8), option (4), length (4), then the payload. */
#define NBD_OPT_HEADER_SIZE     16
/* Option reply: magic (8), option (4), reply type (4), length (4). */
#define NBD_REP_HEADER_SIZE     20

/* Option codes. */
#define NBD_OPT_EXPORT_NAME     1
#define NBD_OPT_ABORT           2
#define NBD_OPT_LIST            3
#define NBD_OPT_PEEK_EXPORT     4   /* withdrawn */
#define NBD_OPT_STARTTLS        5
#define NBD_OPT_INFO            6
#define NBD_OPT_GO              7
#define NBD_OPT_STRUCTURED_REPLY 8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT 10
#define NBD_OPT_EXTENDED_HEADERS 11

/* Option reply types. */
#define NBD_REP_ACK             1u
#define NBD_REP_SERVER          2u
#define NBD_REP_INFO            3u
#define NBD_REP_META_CONTEXT    4u
#define NBD_REP_FLAG_ERROR      (1u << 31)
#define NBD_REP_ERR_UNSUP       (NBD_REP_FLAG_ERROR | 1)
#define NBD_REP_ERR_POLICY      (NBD_REP_FLAG_ERROR | 2)
#define NBD_REP_ERR_INVALID     (NBD_REP_FLAG_ERROR | 3)
#define NBD_REP_ERR_PLATFORM    (NBD_REP_FLAG_ERROR | 4)
#define NBD_REP_ERR_TLS_REQD    (NBD_REP_FLAG_ERROR | 5)
#define NBD_REP_ERR_UNKNOWN     (NBD_REP_FLAG_ERROR | 6)
#define NBD_REP_ERR_SHUTDOWN    (NBD_REP_FLAG_ERROR | 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR | 8)
#define NBD_REP_ERR_TOO_BIG     (NBD_REP_FLAG_ERROR | 9)
#define NBD_REP_ERR_EXT_HEADER_REQD (NBD_REP_FLAG_ERROR | 10)

/* NBD_INFO_* (payload of NBD_REP_INFO: u16 type, then the data). */
#define NBD_INFO_EXPORT         0   /* u64 size, u16 transmission flags */
#define NBD_INFO_NAME           1   /* the canonical name */
#define NBD_INFO_DESCRIPTION    2   /* free text */
#define NBD_INFO_BLOCK_SIZE     3   /* u32 min, u32 preferred, u32 max */

/* EXPORT_NAME reply: u64 size, u16 flags, 124 zero bytes unless both
 * sides agreed on NO_ZEROES. */
#define NBD_EXPORT_NAME_REPLY_SIZE 10
#define NBD_EXPORT_NAME_PADDING 124

/* Transmission flags (u16). */
#define NBD_FLAG_HAS_FLAGS          (1u << 0)
#define NBD_FLAG_READ_ONLY          (1u << 1)
#define NBD_FLAG_SEND_FLUSH         (1u << 2)
#define NBD_FLAG_SEND_FUA           (1u << 3)
#define NBD_FLAG_ROTATIONAL         (1u << 4)
#define NBD_FLAG_SEND_TRIM          (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES  (1u << 6)
#define NBD_FLAG_SEND_DF            (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN     (1u << 8)
#define NBD_FLAG_SEND_RESIZE        (1u << 9)
#define NBD_FLAG_SEND_CACHE         (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO     (1u << 11)
#define NBD_FLAG_BLOCK_STATUS_PAYLOAD (1u << 12)

/* ---- transmission ------------------------------------------------------- */
#define NBD_REQUEST_MAGIC           UINT32_C (0x25609513)
#define NBD_EXTENDED_REQUEST_MAGIC  UINT32_C (0x21e41c71)
#define NBD_SIMPLE_REPLY_MAGIC      UINT32_C (0x67446698)
#define NBD_STRUCTURED_REPLY_MAGIC  UINT32_C (0x668e33ef)
#define NBD_EXTENDED_REPLY_MAGIC    UINT32_C (0x6e8a278c)

/* Request (compact):  magic u32 @0, flags u16 @4, type u16 @6,
 *                     cookie u64 @8, offset u64 @16, length u32 @24.
 * Request (extended): the same up to @24, then length u64 @24. */
#define NBD_REQUEST_SIZE            28
#define NBD_EXTENDED_REQUEST_SIZE   32

/* Simple reply: magic u32 @0, error u32 @4, cookie u64 @8; READ data. */
#define NBD_SIMPLE_REPLY_SIZE       16
/* Structured chunk: magic u32 @0, flags u16 @4, type u16 @6, cookie u64
 * @8, payload length u32 @16. */
#define NBD_STRUCTURED_REPLY_SIZE   20
/* Extended chunk: magic u32 @0, flags u16 @4, type u16 @6, cookie u64 @8,
 * the request's offset u64 @16, payload length u64 @24. */
#define NBD_EXTENDED_REPLY_SIZE     32

/* Command types. */
#define NBD_CMD_READ            0
#define NBD_CMD_WRITE           1
#define NBD_CMD_DISC            2
#define NBD_CMD_FLUSH           3
#define NBD_CMD_TRIM            4
#define NBD_CMD_CACHE           5
#define NBD_CMD_WRITE_ZEROES    6
#define NBD_CMD_BLOCK_STATUS    7
#define NBD_CMD_RESIZE          8   /* experimental; refused */

/* Command flags (u16). */
#define NBD_CMD_FLAG_FUA        (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE    (1u << 1)
#define NBD_CMD_FLAG_DF         (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE    (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO  (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN (1u << 5)  /* extended headers only */

/* Reply chunk flags and types. */
#define NBD_REPLY_FLAG_DONE     (1u << 0)
#define NBD_REPLY_TYPE_NONE             0
#define NBD_REPLY_TYPE_OFFSET_DATA      1   /* u64 offset, data */
#define NBD_REPLY_TYPE_OFFSET_HOLE      2   /* u64 offset, u32 length */
#define NBD_REPLY_TYPE_BLOCK_STATUS     5   /* u32 id, n x (u32 len, u32 flags) */
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6   /* u32 id, u32 n, n x (u64, u64) */
#define NBD_REPLY_TYPE_ERROR            0x8001 /* u32 error, u16 len, msg */
#define NBD_REPLY_TYPE_ERROR_OFFSET     0x8002 /* ... then u64 offset */

/* Error values. */
#define NBD_SUCCESS     0
#define NBD_EPERM       1
#define NBD_EIO         5
#define NBD_ENOMEM      12
#define NBD_EINVAL      22
#define NBD_ENOSPC      28
#define NBD_EOVERFLOW   75
#define NBD_ENOTSUP     95
#define NBD_ESHUTDOWN   108

/* base:allocation */
#define NBD_STATE_HOLE  (1u << 0)
#define NBD_STATE_ZERO  (1u << 1)
/* qemu:dirty-bitmap:NAME */
#define NBD_STATE_DIRTY (1u << 0)

/* ---- limits ------------------------------------------------------------- */
#define NBD_MAX_STRING          4096            /* names, queries */
#define NBD_MAX_PAYLOAD         (32u << 20)     /* READ/WRITE data */

#endif /* RAWTRACK_NBD_PROTOCOL_H */
