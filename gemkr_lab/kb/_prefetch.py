"""A software prefetch for numba kernels (LLVM's `llvm.prefetch`).

A best-first search in a large index waits on one cache miss after another; fetching the rows of several
queued nodes at once lets those misses overlap. A prefetch is only a hint: it never faults, whatever the address.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, i, j):
    """Start loading the cache line of `arr[i, j]` (a 2-D array; indices are not checked)."""
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        ary, ii, jj = args
        aryty = signature.args[0]
        a = context.make_array(aryty)(context, builder, ary)
        ptr = cgutils.get_item_pointer2(
            context,
            builder,
            data=a.data,
            shape=cgutils.unpack_tuple(builder, a.shape),
            strides=cgutils.unpack_tuple(builder, a.strides),
            layout=aryty.layout,
            inds=[ii, jj],
        )
        byte_ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch")
        # read (0), keep in all cache levels (3), data cache (1)
        builder.call(fn, [byte_ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
